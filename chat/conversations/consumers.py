"""The chat socket: one connection watches one conversation and sends its user's commands."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext as _

from chat.conversations import actions, events
from chat.conversations.actions import ChatError
from chat.conversations.following import Follower
from chat.conversations.frames import done_frame, error_frame, message_frame
from chat.core import log_context, outage
from chat.core.db_threads import in_db_pool

log = logging.getLogger(__name__)

CLOSE_NOT_LOGGED_IN = 4401
CLOSE_FORBIDDEN = 4403
MAX_CLIENT_ID = 64
# A frame's request id is "<connection id>.<frame number>": it fits AuditEvent.request_id (64).
CONNECTION_ID_CHARS = 54


class TokenBucket:
    """Allows `burst` frames at once, refilled at `rate` per second."""

    def __init__(self, burst: int, rate: float) -> None:
        self.capacity, self.rate = float(burst), rate
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _language_of(scope: dict[str, Any]) -> str:
    """The language the user picked (the cookie LocaleMiddleware reads for pages), or the default."""
    code = scope.get("cookies", {}).get(settings.LANGUAGE_COOKIE_NAME) or settings.LANGUAGE_CODE
    try:
        return translation.get_supported_language_variant(code)
    except LookupError:
        return settings.LANGUAGE_CODE


def _shown_type(kind: Any) -> str:
    """A frame's unknown "type" as an error quotes it: never the text of a whole list or object (a frame's
    worth of work, and for one nested a thousand deep a RecursionError)."""
    if isinstance(kind, (list, dict)):
        return "[…]" if isinstance(kind, list) else "{…}"
    return str(kind)[:40]


class ChatConsumer(AsyncWebsocketConsumer):
    # ---- socket handlers -------------------------------------------------------------------
    async def connect(self) -> None:
        self.follower: Follower | None = None  # set once the socket may watch the conversation
        self.catching_up: asyncio.Task | None = None
        self.language = _language_of(self.scope)
        self._start_log_context()
        # Accept first so the close code reaches the browser (a refused handshake has none).
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_NOT_LOGGED_IN)
            return
        self.conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        try:
            owns = await self._owns_conversation()
        except outage.OUTAGE_ERRORS as exc:  # the page reconnects with backoff and resumes
            outage.log_outage(f"socket connect {self.conversation_id}", exc)
            await self.close(code=outage.CLOSE_TRY_AGAIN_LATER)
            return
        if not owns:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        log_context.bind(conversation_id=self.conversation_id)
        self.bucket = TokenBucket(settings.SOCKET_FRAME_BURST, settings.SOCKET_FRAMES_PER_SECOND)
        self.follower = Follower(self.conversation_id)
        await self.follower.subscribe(self.channel_name)
        # Frames of an answer stopped coming (lost while Redis restarted, say): the page gets what the row has.
        self.catching_up = asyncio.create_task(self.follower.keep_caught_up(self.send_json))

    async def disconnect(self, code: int) -> None:
        if self.catching_up is not None:
            self.catching_up.cancel()
        if self.follower is not None:
            await self.follower.close()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.follower is None:  # closing: ignore anything that raced the close
            return
        self.frames += 1
        # Each frame gets its own id, so two answers asked on one socket are told apart in the
        # logs, while a search for the connection's id still finds the whole socket's story.
        with translation.override(self.language), log_context.bound(request_id=f"{self.connection_id}.{self.frames}"):
            await self._handle(text_data, bytes_data)

    async def _handle(self, text_data: str | None, bytes_data: bytes | None) -> None:
        try:
            frame = self._parse(text_data, bytes_data)
            kind = frame.get("type")
            handler = self.COMMANDS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ChatError("unknown_type", _("Unknown frame type “%(type)s”.") % {"type": _shown_type(kind)})
            log.debug("socket frame %s", kind)
            await handler(self, frame)
        except ChatError as exc:
            await self.send_json(error_frame(exc.code, exc.message, exc.message_id))
        except Exception as exc:
            found = outage.outage_error(exc)
            if found is not None:  # the command's transaction rolled back: the user can simply retry
                outage.log_outage("socket command", found)
                await self.send_json(error_frame(
                    "unavailable", _("The database is unavailable right now. Try again in a few seconds.")))
                return
            log.exception("socket command failed")
            await self.send_json(error_frame("server_error", _("Something went wrong on the server; try again.")))

    # ---- command helpers -------------------------------------------------------------------
    def _start_log_context(self) -> None:
        """The connection's id (the handshake's X-Request-ID when plain, else a new one) goes into this
        connection's log context (its asyncio task's own) and onto the scope, where audit events find it."""
        headers = dict(self.scope.get("headers") or [])
        given = log_context.clean_request_id(headers.get(b"x-request-id", b"").decode("latin-1"))
        self.connection_id = (given or log_context.new_request_id())[:CONNECTION_ID_CHARS]
        self.frames = 0
        self.scope["audit_request_id"] = self.connection_id
        log_context.begin(request_id=self.connection_id)

    def _frame_scope(self) -> dict[str, Any]:
        """The scope as audit events of the current frame read it: with the frame's request id."""
        return {**self.scope, "audit_request_id": log_context.request_id() or self.connection_id}

    def _parse(self, text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
        if not self.bucket.take():
            raise ChatError("rate_limited", _("Too many frames; slow down."))
        if text_data is None:
            raise ChatError("invalid_frame", _("Frames must be JSON text."))
        # A generous bound for a maximal prompt with JSON escaping, checked before parsing.
        if len(text_data) > settings.MAX_PROMPT_CHARS * 6 + 4096:
            raise ChatError("frame_too_large", _("The frame is too large."))
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):
            raise ChatError("invalid_json", _("The frame is not valid JSON.")) from None
        if not isinstance(frame, dict):
            raise ChatError("invalid_frame", _("A frame must be a JSON object with a “type”."))
        return frame

    async def _cmd_send(self, frame: dict[str, Any]) -> None:
        client_id = frame.get("client_id", "")
        # It is saved with the message: a NUL or a lone surrogate ("\ud800" in JSON) would fail the INSERT.
        if not isinstance(client_id, str) or len(client_id) > MAX_CLIENT_ID or not actions.is_storable(client_id):
            raise ChatError("invalid_frame", _("client_id must be a string of at most %(limit)d characters.")
                            % {"limit": MAX_CLIENT_ID})
        await in_db_pool(actions.do_send_message)(
            self.scope["user"], self.conversation_id, frame.get("content"), client_id, announce=self._announce,
            edit_of=frame.get("edit_of"),  # an edit: the new message is a version of that one
            attachments=frame.get("attachments") or None, request=self._frame_scope(),
        )

    def _announce(self, sent: actions.SentMessage) -> None:
        """Runs in the database thread after the commit, before the answer is queued."""
        if sent.user_message is not None:
            question = message_frame(sent.user_message)
            question["message"]["conversation_title"] = sent.title  # open pages rename the chat
            events.publish(self.conversation_id, question)
        events.publish(self.conversation_id, message_frame(sent.assistant_message))

    async def _cmd_regenerate(self, frame: dict[str, Any]) -> None:
        await in_db_pool(actions.do_regenerate)(
            self.scope["user"], self.conversation_id, frame.get("message_id"), announce=self._announce
        )

    async def _cmd_select(self, frame: dict[str, Any]) -> None:
        """Remember which version the page shows, so a reload shows the same branch."""
        await database_sync_to_async(actions.do_select_version)(
            self.scope["user"], self.conversation_id, frame.get("message_id")
        )

    async def _cmd_stop(self, frame: dict[str, Any]) -> None:
        cancelled = await database_sync_to_async(actions.do_request_stop)(self.scope["user"], frame.get("message_id"))
        if cancelled is not None:  # it never started: no worker will announce the end
            await events.apublish(self.conversation_id, done_frame(cancelled))

    async def _cmd_resume(self, frame: dict[str, Any]) -> None:
        after_seq = frame.get("after_seq", 0)
        if not isinstance(after_seq, int) or isinstance(after_seq, bool) or after_seq < 0:
            raise ChatError("invalid_frame", _("after_seq must be a non-negative integer."))
        message = await database_sync_to_async(actions.resume_snapshot)(
            self.scope["user"], self.conversation_id, frame.get("message_id")
        )
        # The row holds every delta published so far; the client replaces its partial text.
        await self.send_json(message_frame(message))
        if not message.is_active:
            await self.send_json(done_frame(message))

    COMMANDS = {
        "send": _cmd_send, "stop": _cmd_stop, "resume": _cmd_resume, "regenerate": _cmd_regenerate,
        "select": _cmd_select,
    }

    @database_sync_to_async
    def _owns_conversation(self) -> bool:
        try:
            actions.get_conversation(self.scope["user"], self.conversation_id)
            return True
        except ChatError:
            return False

    async def send_json(self, content: dict[str, Any]) -> None:
        if self.follower is not None:
            self.follower.heard(content)
        text = json.dumps(content, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (JSON lets a client send "\ud800", and an error may quote it) cannot go into a
            # UTF-8 text frame: daphne's encode would raise in the middle of the reply. Escaped, it can.
            text = json.dumps(content)
        await self.send(text_data=text)

    # ---- channel-layer handlers --------------------------------------------------------------
    async def dispatch(self, message: dict[str, Any]) -> None:
        # A frame from the conversation's group touches no database: it skips channels' per-message
        # close_old_connections, a hop to the database thread and back for every frame (a fifth of
        # daphne's time at 48 streams, shared/FACTS.md).
        if message.get("type") == "chat.frame":
            await self.chat_frame(message)
            return
        await super().dispatch(message)

    async def chat_frame(self, event: dict[str, Any]) -> None:
        await self.send_json(event["frame"])
