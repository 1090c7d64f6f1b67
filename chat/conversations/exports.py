"""Conversations to and from files: Markdown and JSON exports, JSON import."""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Container, Sequence
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify
from django.utils.translation import gettext as _

from chat.conversations import threads
from chat.conversations.actions import ChatError, branch_messages, check_moderated, check_title
from chat.conversations.models import Conversation, Message
from chat.core import rate_windows
from chat.core.served_models import all_models, default_model

log = logging.getLogger(__name__)

EXPORT_FORMAT = "deepseek-web.conversation"
EXPORT_VERSION = 1
IMPORT_RATE_WINDOW_SECONDS = 3600
IMPORT_MAX_BYTES = 5 * 1024 * 1024
IMPORT_MAX_MESSAGES = 5000
IMPORTED_TITLE = "Imported chat"
SYSTEM_PROMPT_MAX = 4000  # the settings form's limit
ANSWER_MAX = 200_000  # an answer or its reasoning: far beyond any model's output, still bounded
ID_MAX = 64
FINISH_REASON_MAX = 32  # Message.finish_reason's length
TOKENS_MAX = 2**31 - 1  # fits the database's integer column everywhere
ROLES = ("user", "assistant", "system")
# Imported answers are never active: nothing would ever finish a half-written one.
STATUSES = {"done": "done", "cancelled": "cancelled", "failed": "failed", "pending": "cancelled",
            "streaming": "cancelled"}


def export_json(conversation: Conversation) -> dict[str, Any]:
    """Every message of the tree, not just the branch on show, so other versions survive a round trip."""
    messages = conversation.messages.order_by("position")
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": timezone.now().isoformat(),
        "title": conversation.title, "model": conversation.model, "created_at": conversation.created_at.isoformat(),
        "settings": {"system_prompt": conversation.system_prompt, "temperature": conversation.temperature,
                     "top_p": conversation.top_p, "max_tokens": conversation.max_tokens},
        "current_leaf": str(conversation.current_leaf_id) if conversation.current_leaf_id else None,
        "messages": [{
            "id": str(m.id), "parent_id": str(m.parent_id) if m.parent_id else None, "role": m.role,
            "content": m.content, "reasoning": m.reasoning, "status": m.status, "finish_reason": m.finish_reason,
            "created_at": m.created_at.isoformat(),
            "usage": {"prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens},
        } for m in messages],
    }


_HEADINGS = {"user": "You", "assistant": "Assistant", "system": "System"}
_NOTES = {"cancelled": "*The answer was stopped before it was finished.*", "failed": "*The answer failed.*",
          "pending": "*The answer was still being written.*", "streaming": "*The answer was still being written.*"}


def export_markdown(conversation: Conversation) -> str:
    """What the reader sees: the branch on show only; text stays raw because a Markdown file is what was asked for."""
    parts = [f"# {' '.join(conversation.display_title.split())}"]
    if conversation.system_prompt:
        parts += ["## System prompt", conversation.system_prompt]
    for message in branch_messages(conversation):
        parts.append(f"## {_HEADINGS.get(message.role, message.role)}")
        if message.role == "assistant" and message.reasoning:
            quoted = "\n".join(f"> {line}" if line else ">" for line in message.reasoning.splitlines())
            parts.append(f"> **Thinking**\n>\n{quoted}")
        if message.content:
            parts.append(message.content)
        if message.role == "assistant" and message.status in _NOTES:
            parts.append(_NOTES[message.status])
    return "\n\n".join(parts) + "\n"


def export_filename(conversation: Conversation, ext: str) -> str:
    """ASCII only: a title can hold anything, and a header's filename must not."""
    ext = ext.lstrip(".")
    if ext not in ("md", "json"):
        raise ValueError(f"no export format {ext!r}")
    stem = slugify(conversation.title)[:60].strip("-_") or "conversation"
    return f"{stem}.{ext}"


def _fail(message: str) -> ChatError:
    return ChatError("invalid_import", message)


def _text(value: Any, where: str, limit: int, optional: bool = False) -> str:
    """A string that the database can store: no NUL, no lone surrogate, within `limit`."""
    if optional and value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(f"{where} must be text.")
    if "\x00" in value:
        raise _fail(f"{where} contains a NUL character, which cannot be stored.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(f"{where} contains characters that are not valid Unicode.") from None
    if len(value) > limit:
        raise _fail(f"{where} is {len(value)} characters long; the limit is {limit}.")
    return value


def _number(value: Any, where: str, low: float, high: float, low_open: bool = False) -> float | None:
    """None means the model's default; booleans are refused although Python counts them as numbers."""
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (low < value if low_open else low <= value) or not value <= high:
        span = f"above {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
        raise _fail(f"{where} must be a number {span}, or null.")
    return float(value)


def _whole(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(f"{where} must be a whole number from {low} to {high}.")
    return value


def _check_settings(options: Any, max_new_tokens: int) -> dict[str, Any]:
    """The settings form's rules: a file must not give a conversation what the form would refuse."""
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise _fail("Settings must be an object.")
    tokens = options.get("max_tokens")
    return {
        "system_prompt": _text(options.get("system_prompt"), "The system prompt", SYSTEM_PROMPT_MAX, optional=True),
        "temperature": _number(options.get("temperature"), "Settings: temperature", 0, 2),
        "top_p": _number(options.get("top_p"), "Settings: top_p", 0, 1, low_open=True),
        "max_tokens": None if tokens is None else _whole(tokens, "Settings: max_tokens", 1, max_new_tokens),
    }


def _check_message(i: int, item: Any, known: Container[str], linear: bool) -> tuple[str | None, Any, dict[str, Any]]:
    """Message `i` (1-based) of the file: its file id, its parent's file id, and the fields of its new row."""
    where = f"Message {i}"
    if not isinstance(item, dict):
        raise _fail(f"{where} must be an object.")
    role, status = item.get("role"), item.get("status", "done")
    if role not in ROLES:
        raise _fail(f"{where}: role must be user, assistant or system.")
    if status not in STATUSES:
        raise _fail(f"{where}: status must be done, cancelled, failed, pending or streaming.")
    own_id, parent_id = item.get("id"), item.get("parent_id")
    if own_id is not None and _text(own_id, f"{where}: id", ID_MAX) in known:
        raise _fail(f"{where}: the id {own_id!r} is used by an earlier message.")
    if not linear and parent_id is not None and (not isinstance(parent_id, str) or parent_id not in known):
        raise _fail(f"{where}: parent_id must name an earlier message of the file, or be null.")
    usage = item.get("usage") or {}
    if not isinstance(usage, dict):
        raise _fail(f"{where}: usage must be an object.")
    fields = {
        "role": role, "status": STATUSES[status],
        "content": _text(item.get("content"), f"{where}: content",
                         ANSWER_MAX if role == "assistant" else settings.MAX_PROMPT_CHARS),
        "reasoning": _text(item.get("reasoning"), f"{where}: reasoning", ANSWER_MAX, optional=True),
        "finish_reason": _text(item.get("finish_reason"), f"{where}: finish_reason", FINISH_REASON_MAX, optional=True)
        or ("cancelled" if status != STATUSES[status] else ""),
    }
    for key in ("prompt_tokens", "completion_tokens"):
        fields[key] = _whole(usage.get(key, 0), f"{where}: usage.{key}", 0, TOKENS_MAX)
    return own_id, parent_id, fields


def check_import_rate(user: AbstractBaseUser) -> None:
    """Before an upload is even parsed: ChatError once the user has tried IMPORTS_PER_USER_PER_HOUR imports
    this hour (0 = no limit). Every try counts, refused and failed ones too: reading, parsing, checking
    and moderating a file of up to IMPORT_MAX_BYTES is the cost this bounds."""
    per_hour = settings.IMPORTS_PER_USER_PER_HOUR
    if not per_hour:
        return
    try:
        wait = rate_windows.hit(f"deepseek:chat:imports:{user.pk}:{IMPORT_RATE_WINDOW_SECONDS}", per_hour,
                                IMPORT_RATE_WINDOW_SECONDS)
    except redis.RedisError:  # as for chat messages: the limit is skipped, not the import refused
        log.warning("import limit skipped: Redis unavailable")
        return
    if wait is not None:
        raise ChatError("rate_limited", _("You can import at most %(limit)d conversations an hour. Try again in "
                                          "%(minutes)d min.") % {"limit": per_hour, "minutes": -(-wait // 60)})


def _moderate(user: AbstractBaseUser, model: str, system_prompt: str, rows: Sequence[Message]) -> None:
    """The one input check (actions.check_moderated) on every text of the file that a model would read
    once the conversation goes on: its system prompt and each message's content, whatever the role (an
    "assistant" message of a file is the uploader's text too). Reasoning is shown, never sent to a model.
    The first refusal stops the import, saying where; nothing is written but its audit event."""
    if system_prompt:
        try:
            check_moderated(user, system_prompt, model=model, field="import.system_prompt")
        except ChatError:
            raise ChatError("content_filter", _("The system prompt was refused by the content filter.")) from None
    for number, row in enumerate(rows, 1):
        if not row.content:
            continue
        try:
            check_moderated(user, row.content, model=model, field=f"import.messages[{number}].content")
        except ChatError:
            raise ChatError("content_filter", _("Message %(number)d was refused by the content filter.")
                            % {"number": number}) from None


def _parse(raw: bytes) -> dict[str, Any]:
    if len(raw) > IMPORT_MAX_BYTES:
        raise _fail(f"The file is {len(raw)} bytes; the limit is {IMPORT_MAX_BYTES} bytes.")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise _fail("The file is not UTF-8 text.") from None
    except RecursionError:
        raise _fail("The file's JSON is nested too deeply.") from None
    except ValueError:  # JSONDecodeError, and integers too long to convert
        raise _fail("The file is not valid JSON.") from None
    if not isinstance(data, dict):
        raise _fail("The file must hold a JSON object.")
    if data.get("format") != EXPORT_FORMAT:
        raise _fail(f"The file is not a conversation export (its format must be {EXPORT_FORMAT!r}).")
    if data.get("version") != EXPORT_VERSION or isinstance(data.get("version"), bool):
        raise _fail(f"The file's export version is not supported (only version {EXPORT_VERSION} is).")
    return data


def _check_title(title: Any) -> str:
    if title is None or isinstance(title, str) and not title.strip():
        return IMPORTED_TITLE
    try:
        title = check_title(title)
    except ChatError as error:
        raise _fail(error.message) from None
    return _text(title, "The title", len(title))  # check_title lets lone surrogates through


def do_import(user: AbstractBaseUser, raw: bytes) -> Conversation:
    """Validate the whole file first, then write it in one transaction with new ids: a file may come from
    another user or server, so nothing in it may name rows here."""
    data = _parse(raw)
    title = _check_title(data.get("title"))
    model = data.get("model")
    spec = (all_models().get(model) if isinstance(model, str) else None) or default_model()
    options = _check_settings(data.get("settings"), spec.max_new_tokens)
    items = data.get("messages")
    if not isinstance(items, list):
        raise _fail("Messages must be a list.")
    if len(items) > IMPORT_MAX_MESSAGES:
        raise _fail(f"The file has {len(items)} messages; the limit is {IMPORT_MAX_MESSAGES}.")
    linear = not any(isinstance(item, dict) and "parent_id" in item for item in items)
    now, rows, new_ids = timezone.now(), [], {}
    for position, item in enumerate(items, start=1):
        file_id, parent_file_id, fields = _check_message(position, item, new_ids, linear)
        parent = (rows[-1].id if rows else None) if linear else new_ids.get(parent_file_id)
        rows.append(Message(id=uuid.uuid4(), position=position, parent_id=parent, created_at=now, updated_at=now,
                            **fields))
        if file_id is not None:
            new_ids[file_id] = rows[-1].id
    leaf = new_ids.get(data["current_leaf"]) if isinstance(data.get("current_leaf"), str) else None
    # An inner message named as the leaf shows its newest branch, as picking that version would.
    leaf = threads.newest_leaf_under(leaf, rows) if leaf else threads.default_leaf(rows)
    _moderate(user, spec.name, options["system_prompt"], rows)  # last: the costliest check
    with transaction.atomic():
        conversation = Conversation.objects.create(user=user, title=title, model=spec.name, created_at=now,
                                                   updated_at=now, current_leaf=None, **options)
        for row in rows:
            row.conversation = conversation
        Message.objects.bulk_create(rows)
        if leaf is not None:
            Conversation.objects.filter(id=conversation.id).update(current_leaf_id=leaf)
            conversation.current_leaf_id = leaf
    return conversation
