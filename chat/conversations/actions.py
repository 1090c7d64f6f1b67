"""Writes to conversations and messages: `check_*` validates and authorizes, `do_*` mutates.

Every lookup is scoped by the acting user; tasks are enqueued only after the commit.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from chat.audit import record as audit
from chat.conversations import image_budget, lifecycle, liveness, message_limits, threads, token_quota, uploads
from chat.conversations.models import Conversation, Message
from chat.core import log_context
from chat.core.errors import ChatError
from chat.core.metrics import moderation_blocked
from chat.core.served_models import default_model, get_model
from chat.core.worker_routing import queue_for
from chat.moderation import moderator as moderation
from inference.prompt_check import chat_tokens
from inference.registry import ModelSpec, UnknownModel

log = logging.getLogger(__name__)

GENERATE_TASK = lifecycle.GENERATE_TASK
TITLE_CHARS = 60  # an automatic title: the first message's first characters
TITLE_MAX = 200  # a title the user gives (Conversation.title's length)
SEARCH_MAX = 200


ID_KINDS = (gettext_noop("conversation"), gettext_noop("message"))


def _parse_uuid(value: Any, what: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        # Only text can be an id. str() of anything else from a frame would be wasted work, and for a list
        # nested a thousand deep (valid JSON) it raises RecursionError, depending on how deep the stack is.
        if not isinstance(value, str):
            raise TypeError(what)
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise ChatError("invalid_id", _("The %(what)s id is not valid.") % {"what": _(what)}) from None


def conversations_for(user: AbstractBaseUser):
    """The user's chats (API requests are kept apart: they are not chats to reopen)."""
    return Conversation.objects.filter(user=user, source=Conversation.Source.CHAT).order_by("-updated_at")


def get_conversation(user: AbstractBaseUser, conversation_id: Any) -> Conversation:
    """The user's conversation, or ChatError("not_found") for anything else (no existence leak)."""
    cid = _parse_uuid(conversation_id, "conversation")
    try:
        return conversations_for(user).get(id=cid)
    except Conversation.DoesNotExist:
        raise ChatError("not_found", _("No such conversation.")) from None


def get_message(user: AbstractBaseUser, message_id: Any) -> Message:
    mid = _parse_uuid(message_id, "message")
    try:
        return Message.objects.select_related("conversation").get(id=mid, conversation__user=user)
    except Message.DoesNotExist:
        raise ChatError("not_found", _("No such message."), message_id=mid) from None


def do_create_conversation(user: AbstractBaseUser, model: str | None = None) -> Conversation:
    try:
        spec = get_model(model) if model else default_model()
    except UnknownModel:
        raise ChatError("unknown_model", _("No model named “%(model)s” is configured.") % {"model": model}) from None
    return Conversation.objects.create(user=user, model=spec.name)


def _is_unicode(text: str) -> bool:
    """False for lone surrogates (JSON allows "\\ud800"), which no database can store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_storable(text: str) -> bool:
    """False for text no database column takes: a NUL (PostgreSQL refuses it) or a lone surrogate."""
    return "\x00" not in text and _is_unicode(text)


def check_content(content: Any) -> str:
    if not isinstance(content, str):
        raise ChatError("invalid_frame", _("content must be a string."))
    if not content.strip():
        raise ChatError("empty_message", _("The message is empty."))
    if "\x00" in content:
        raise ChatError("invalid_content", _("The message contains a NUL character, which cannot be stored."))
    if not _is_unicode(content):
        raise ChatError("invalid_content", _("The message contains characters that are not valid Unicode."))
    if len(content) > settings.MAX_PROMPT_CHARS:
        raise ChatError(
            "prompt_too_long",
            _("The message is %(length)d characters long; the limit is %(limit)d.")
            % {"length": len(content), "limit": settings.MAX_PROMPT_CHARS},
        )
    return content


def check_moderated(user: AbstractBaseUser | None, text: str, *, request: Any = None, conversation_id: Any = None,
                    model: str = "", field: str = "prompt") -> None:
    """The one input check: the moderation pipeline on text bound for a model, before anything is saved or
    queued. A block is recorded for staff (a `moderation_block` audit event: direction, field, stage,
    rule, category; never the text, only its hash) and the user gets only the notice.

    Every road that puts text in front of a model passes here first (tests/app/test_moderation_roads.py
    sends a blocked text down each one):
    - socket `send`: ChatConsumer._cmd_send → do_send_message checks the new message;
    - socket `send` with `edit_of` (an edit): do_send_message checks the new text, then
      check_branch_moderated the system prompt and the branch above the edited message;
    - socket `regenerate`: ChatConsumer._cmd_regenerate → do_regenerate → check_branch_moderated;
    - `POST /v1/chat/completions`: chat.api.completions.check_moderation checks every message of the
      request, whatever its role;
    - `/beta/chat/completions`, `/beta/completions`: not served (deepseek_web/urls.py has no /beta route);
      one added later must call this for its prefix, prompt and suffix;
    - `POST /c/<id>/settings/` (the system prompt): views.update_settings declares @moderated("system_prompt"),
      which ModerationMiddleware checks before the view saves;
    - `POST /c/import/`: exports.do_import checks the file's system prompt and every message before
      writing any row.
    The worker (chat.worker.replies.claim) builds each prompt only from the conversation's system prompt
    and its branch's rows, which entered by these roads (or are the model's own answers, checked by the
    output rules as they streamed: ReplyWriter); it does not check them again. Staff editing rows in the
    admin are trusted and not a road."""
    verdict = moderation.current_moderator().check_input(text)
    if verdict.allowed:
        return
    moderation_blocked("input")
    audit.record("moderation_block", actor=user, request=request, conversation_id=conversation_id, model=model,
                 input_text=text, verdict="blocked", detail={"direction": "input", "field": field,
                                                             **verdict.as_detail()})
    raise ChatError("content_filter", str(moderation.NOTICE))


def check_branch_moderated(user: AbstractBaseUser, conversation: Conversation, parent_id: Any,
                           request: Any = None) -> None:
    """check_moderated on what a regeneration or an edit sends the model again besides any new text: the
    system prompt and every message of the branch ending at `parent_id`, whatever its role (as /v1 checks
    every message it is sent). An imported conversation, or one written before a rule was added, may hold
    text no rule saw; the error says which part to change."""
    if conversation.system_prompt:
        try:
            check_moderated(user, conversation.system_prompt, request=request, conversation_id=conversation.id,
                            model=conversation.model, field="system_prompt")
        except ChatError:
            raise ChatError("content_filter", _("The conversation's system prompt was refused by the content "
                                                "filter; change it in Settings.")) from None
    # Not conversation.messages: each row it yields would read its deferred conversation_id (a query each).
    nodes = Message.objects.filter(conversation_id=conversation.id).only("id", "parent", "position")
    path = [node.id for node in threads.path_to(parent_id, nodes)]
    contents = dict(Message.objects.filter(id__in=path).values_list("id", "content"))
    for number, message_id in enumerate(path, 1):
        if not contents[message_id]:
            continue
        try:
            check_moderated(user, contents[message_id], request=request, conversation_id=conversation.id,
                            model=conversation.model, field=f"branch[{number}].content")
        except ChatError:
            raise ChatError("content_filter", _("Message %(number)d of this conversation was refused by the "
                                                "content filter.") % {"number": number}) from None


class PromptTooLong(ChatError):
    """A prompt that leaves the model no room for its answer: the error says how far over it is."""

    def __init__(self, spec: ModelSpec, tokens: int, answer_tokens: int) -> None:
        self.tokens, self.answer_tokens, self.max_context = tokens, answer_tokens, spec.max_context
        room = spec.max_context - answer_tokens
        super().__init__(
            "prompt_too_long",
            _("The message is %(tokens)d tokens long; %(model)s can take at most %(room)d with room for its answer.")
            % {"tokens": tokens, "model": spec.name, "room": room},
        )


def check_fits(spec: ModelSpec, turns: list[dict[str, str]], answer_tokens: int | None = None) -> None:
    """Refuse, before anything is saved, a prompt (`turns`: role and content each) that leaves no room for
    an answer of `answer_tokens` (by default the model's own maximum). The chat pages check the new message
    alone (they drop the oldest turns to fit), the API every message it was sent (it drops none)."""
    answer = answer_tokens or spec.max_new_tokens
    tokens = chat_tokens(spec, turns)
    if tokens is not None and tokens + answer > spec.max_context:
        raise PromptTooLong(spec, tokens, answer)


@dataclass(frozen=True)
class SentMessage:
    user_message: Message | None  # None for a regeneration (no new question)
    assistant_message: Message
    title: str  # the conversation's title after this message (the first one names it)


BUSY = gettext_noop("An answer is still being written. Stop it or wait for it to finish.")


def _model_of(conversation: Conversation) -> ModelSpec:
    try:
        return get_model(conversation.model)
    except UnknownModel:
        raise ChatError("unknown_model", _("The model “%(model)s” is no longer configured.")
                        % {"model": conversation.model}) from None


def tree_nodes(conversation: Conversation) -> list[Message]:
    """The conversation's messages with only what the tree needs (id, parent, position), in one query: not
    conversation.messages, whose rows would each look up their deferred conversation_id."""
    return list(Message.objects.filter(conversation=conversation).only("id", "parent_id", "position"))


def _branch_leaf(conversation: Conversation) -> Message | None:
    """The last message of the branch on show (the one a new question follows)."""
    nodes = tree_nodes(conversation)
    leaf_id = conversation.current_leaf_id or threads.default_leaf(nodes)
    return conversation.messages.filter(id=leaf_id).first() if leaf_id else None


@dataclass(frozen=True)
class Turn:
    """A message saved before the answer: the user's question, or one of the messages an API request sent."""

    content: str
    role: str = Message.Role.USER
    client_id: str = ""
    images: Sequence[uuid.UUID] = ()  # the user's attachments, already checked (uploads.check_attachments)


def do_queue_answer(
    conversation: Conversation, spec: ModelSpec, parent: Message | None, turns: Sequence[Turn] = (),
    announce: Callable[[SentMessage], None] | None = None,
) -> SentMessage:
    """After the caller's checks: save `turns` (none for a regeneration) after `parent` and a pending answer
    after them, and queue the answer once committed. The one road both the socket and /v1 take.

    A conversation not saved yet (an API request's hidden one, source "api", with its own settings) is
    created in the same transaction, so a failure leaves no trace of it."""
    try:
        with transaction.atomic():
            now = timezone.now()
            if conversation._state.adding:
                conversation.created_at = conversation.updated_at = now
                conversation.save(force_insert=True)
                last = 0
            else:
                # Taking the conversation's row lock first serialises concurrent sends (both DBs).
                Conversation.objects.filter(id=conversation.id).update(updated_at=now)
                if conversation.messages.filter(status__in=Message.ACTIVE).exists():
                    raise ChatError("busy", _(BUSY))
                last = conversation.messages.aggregate(last=Max("position"))["last"] or 0
            user_message, parent_of_turns = None, parent
            for turn in turns:
                last += 1
                user_message = parent = Message.objects.create(
                    conversation=conversation, position=last, parent=parent, role=turn.role,
                    content=turn.content, client_id=turn.client_id, created_at=now, updated_at=now,
                )
                if turn.images:
                    uploads.attach(conversation.user, turn.images, user_message.id)
            answer = Message.objects.create(
                conversation=conversation, position=last + 1, parent=parent, role=Message.Role.ASSISTANT,
                status=Message.Status.PENDING, created_at=now, updated_at=now,
            )
            token_quota.hold(conversation, spec, parent_of_turns, turns, answer)  # or roll it all back
            first_question = next((t.content for t in turns if t.role == Message.Role.USER), "")
            title = conversation.title or _title_from(first_question)
            Conversation.objects.filter(id=conversation.id).update(title=title, current_leaf=answer)
            sent = SentMessage(user_message, answer, title)
            transaction.on_commit(lambda: _announce_and_enqueue(sent, spec.celery_queue, announce))
    except IntegrityError:
        # The partial unique index caught a concurrent send that passed the check above.
        raise ChatError("busy", _(BUSY)) from None
    return sent


def do_send_message(
    user: AbstractBaseUser,
    conversation_id: Any,
    content: Any,
    client_id: str = "",
    announce: Callable[[SentMessage], None] | None = None,
    edit_of: Any = None,
    attachments: Any = None,
    request: Any = None,
) -> SentMessage:
    """Save the user's message and a pending answer, and queue the answer's generation.

    The message follows the branch on show, or with `edit_of` becomes a new version of that
    earlier user message (a sibling: the old branch stays). After the commit, `announce` runs
    first and the task is queued second, so watchers hear of the new messages before any of the
    answer's deltas can exist."""
    content = check_content(content)
    conversation = get_conversation(user, conversation_id)
    check_moderated(user, content, request=request, conversation_id=conversation.id, model=conversation.model)
    spec = _model_of(conversation)
    system = [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
    check_fits(spec, [*system, {"role": "user", "content": content}])
    images = uploads.check_attachments(user, attachments) if attachments else []
    if images and not spec.vision:
        raise ChatError("vision_unsupported", _("%(model)s cannot see images. Pick a model that can in Settings, "
                                                "or send the message without them.") % {"model": spec.name})
    if images:
        image_budget.check_image_budget(image_budget.attachment_sizes(images), conversation)
    if edit_of is not None:
        edited = get_message(user, edit_of)
        if edited.conversation_id != conversation.id or edited.role != Message.Role.USER:
            raise ChatError("not_found", _("No such message to edit."), message_id=edited.id)
        parent = edited.parent
    else:
        parent = _branch_leaf(conversation)
    message_limits.check_and_count(user)
    if edit_of is not None:  # after the limits: a branch may be long (an import holds up to 5 MB)
        check_branch_moderated(user, conversation, edited.parent_id, request)
    return do_queue_answer(conversation, spec, parent, [Turn(content, client_id=client_id, images=images)], announce)


def do_regenerate(
    user: AbstractBaseUser, conversation_id: Any, message_id: Any,
    announce: Callable[[SentMessage], None] | None = None,
) -> SentMessage:
    """Write a new version of an answer; the earlier versions stay as its siblings."""
    conversation = get_conversation(user, conversation_id)
    answer = get_message(user, message_id)
    if answer.conversation_id != conversation.id or answer.role != Message.Role.ASSISTANT:
        raise ChatError("not_found", _("No such answer to regenerate."), message_id=answer.id)
    if answer.is_active:
        raise ChatError("busy", _(BUSY), message_id=answer.id)
    spec = _model_of(conversation)
    message_limits.check_and_count(user)
    check_branch_moderated(user, conversation, answer.parent_id)  # after the limits: a branch may be long
    return do_queue_answer(conversation, spec, answer.parent, announce=announce)


def do_select_version(user: AbstractBaseUser, conversation_id: Any, message_id: Any) -> Message:
    """Show the branch through `message_id` (following the newest children below it)."""
    conversation = get_conversation(user, conversation_id)
    chosen = get_message(user, message_id)
    if chosen.conversation_id != conversation.id:
        raise ChatError("not_found", _("No such message."), message_id=chosen.id)
    nodes = tree_nodes(conversation)
    leaf = conversation.messages.get(id=threads.newest_leaf_under(chosen.id, nodes))
    Conversation.objects.filter(id=conversation.id).update(current_leaf=leaf)
    return leaf


def branch_messages(conversation: Conversation) -> list[Message]:
    """The messages of the branch on show, oldest first."""
    everything = list(conversation.messages.all())
    return threads.path_to(conversation.current_leaf_id or threads.default_leaf(everything), everything)


def check_title(title: Any) -> str:
    if not isinstance(title, str):
        raise ChatError("invalid_title", _("The title must be text."))
    title = " ".join(title.split())
    if not title:
        raise ChatError("invalid_title", _("The title is empty."))
    if "\x00" in title or not _is_unicode(title):
        raise ChatError("invalid_title", _("The title contains a NUL character or text that is not valid Unicode."))
    if len(title) > TITLE_MAX:
        raise ChatError("invalid_title", _("The title is %(length)d characters long; the limit is %(limit)d.")
                        % {"length": len(title), "limit": TITLE_MAX})
    return title


def do_rename(user: AbstractBaseUser, conversation_id: Any, title: Any) -> Conversation:
    title = check_title(title)
    conversation = get_conversation(user, conversation_id)
    Conversation.objects.filter(id=conversation.id).update(title=title)
    conversation.title = title
    return conversation


def do_delete_conversation(user: AbstractBaseUser, conversation_id: Any) -> None:
    """Delete a conversation with its messages; a worker writing an answer finds its row gone
    and stops."""
    conversation = get_conversation(user, conversation_id)
    conversation.delete()


def search_conversations(user: AbstractBaseUser, query: str):
    """The user's conversations whose title or any message contains `query` (case-insensitive)."""
    # PostgreSQL cannot hold NUL in a query string (a 500 there); nothing stored contains one.
    query = query.replace("\x00", "").strip()[:SEARCH_MAX]
    matches = Q(title__icontains=query) | Q(messages__content__icontains=query)
    ids = conversations_for(user).filter(matches).values("id")
    return conversations_for(user).filter(id__in=ids)


def _announce_and_enqueue(sent: SentMessage, queue: str, announce: Callable[[SentMessage], None] | None) -> None:
    answer = sent.assistant_message
    # For this block only: run on commit, it would otherwise leave the ids on whatever thread committed.
    with log_context.bound(conversation_id=answer.conversation_id, message_id=answer.id,
                           model=answer.conversation.model):
        if announce is not None:
            announce(sent)
        # The worker that answered this conversation before holds its KV cache: send it there.
        target = queue_for(queue, answer.conversation_id)
        log.info("queueing answer %s on %s", answer.id, target)
        # The request id travels in the message headers, so the worker's log lines carry it too.
        lifecycle.enqueue(answer.id, target, log_context.task_headers())


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def do_request_stop(user: AbstractBaseUser, message_id: Any) -> Message | None:
    """Stop an answer. Returns the finished row when it was still queued (the caller announces
    it); None when a worker is writing it (the worker finishes it at its next save)."""
    message = get_message(user, message_id)
    if message.role != Message.Role.ASSISTANT or not message.is_active:
        raise ChatError("not_running", _("That answer is not being written."), message_id=message.id)
    now = timezone.now()
    queued = Message.objects.filter(id=message.id, status=Message.Status.PENDING).update(
        status=Message.Status.CANCELLED, finish_reason="cancelled", updated_at=now
    )
    if queued:
        message.refresh_from_db()
        return message
    if Message.objects.filter(id=message.id, status=Message.Status.STREAMING).update(
        stop_requested=True, updated_at=now
    ):
        liveness.publish_cancel(message.id)  # the worker stops at its next token
    return None


def resume_snapshot(user: AbstractBaseUser, conversation_id: Any, message_id: Any) -> Message:
    """The row as saved: every delta published so far is already in it (the worker saves first)."""
    message = get_message(user, message_id)
    if message.conversation_id != _parse_uuid(conversation_id, "conversation"):
        raise ChatError("not_found", _("No such message."), message_id=message.id)
    return message

