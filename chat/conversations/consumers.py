"""The chat socket: one connection watches one conversation and sends its user's commands."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext as _

from chat.accounts import session_epochs
from chat.conversations import actions, events, liveness, socket_slots
from chat.conversations.actions import ChatError
from chat.conversations.following import Follower
from chat.conversations.frames import done_frame, error_frame, message_frame
from chat.core import errors, log_context, outage
from chat.core.db_threads import in_db_pool

log = logging.getLogger(__name__)

CLOSE_NOT_LOGGED_IN = 4401  # also when the session ends while the socket is open (logout, new password, ...)
CLOSE_FORBIDDEN = 4403
# Policy violation (WebSocket's 1008, in the range a server may send): sent on past SOCKET_REFUSALS_BEFORE_CLOSE.
CLOSE_FLOODING = 4008
CLOSE_TOO_MANY_SOCKETS = 4429  # the user has SOCKETS_PER_USER open already (the page says so, no reconnect storm)
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
        self.slot: socket_slots.Slot | None = None
        self.user_group: str | None = None
        self.hub: liveness.SocketHub | None = None
        self.language = _language_of(self.scope)
        self._start_log_context()
        # Accept first so the close code reaches the browser (a refused handshake has none).
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_NOT_LOGGED_IN)
            return
        self.conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.user_id = user.pk
        self.session_key = self.scope["session"].session_key
        try:
            refused = await self._open()
        except BaseException:  # no disconnect follows a connect that raised: give its place back here
            await self._release()
            raise
        if refused is not None:
            await self._release()  # a refused socket holds no place while its close completes
            await self.close(code=refused)

    async def _open(self) -> int | None:
        """Admit the socket and start following its conversation, or say the code to close it with."""
        # The sockets of this process share one Redis client (and one task keeping their keys alive).
        self.hub = liveness.socket_hub().hold()
        try:  # counted before any database work
            self.slot = await socket_slots.admit(self.hub, self.user_id, self.channel_name)
        except socket_slots.UserFull:
            return CLOSE_TOO_MANY_SOCKETS
        except socket_slots.ProcessFull:  # another process (or this one, later) has room
            return outage.CLOSE_TRY_AGAIN_LATER
        try:
            # The epoch is read before the session, so a logout between the two is seen at the next command.
            self.epoch = await self._current_epoch()
            signed_in, owns = await self._admit()
        except outage.OUTAGE_ERRORS as exc:  # the page reconnects with backoff and resumes
            outage.log_outage(f"socket connect {self.conversation_id}", exc)
            return outage.CLOSE_TRY_AGAIN_LATER
        if not signed_in or not owns:
            return CLOSE_FORBIDDEN if signed_in else CLOSE_NOT_LOGGED_IN
        self.verified_at = time.monotonic()
        log_context.bind(conversation_id=self.conversation_id)
        self.bucket = TokenBucket(settings.SOCKET_FRAME_BURST, settings.SOCKET_FRAMES_PER_SECOND)
        self.resumes = TokenBucket(settings.SOCKET_RESUME_BURST, settings.SOCKET_RESUMES_PER_SECOND)
        self.refusals = 0  # rate_limited answers in a row
        # Told when a session of the user may have ended (session_recheck).
        self.user_group = session_epochs.user_group(self.user_id)
        await self.channel_layer.group_add(self.user_group, self.channel_name)
        self.follower = Follower(self.conversation_id)
        await self.follower.subscribe(self.channel_name)
        # Frames of an answer stopped coming (lost while Redis restarted, say): the page gets what the row has.
        self.catching_up = asyncio.create_task(self.follower.keep_caught_up(self.send_json))
        return None

    async def disconnect(self, code: int) -> None:
        await self._release()

    async def _release(self) -> None:
        """Give back all the socket holds (twice is harmless)."""
        await self._leave()
        slot, self.slot = self.slot, None
        if slot is not None:
            await slot.release()
        hub, self.hub = self.hub, None
        if hub is not None:
            hub.release()

    async def _leave(self) -> None:
        """Hear nothing more: no frames of the conversation, no catching up, no session news."""
        if self.catching_up is not None:
            self.catching_up.cancel()
            self.catching_up = None
        follower, self.follower = self.follower, None
        if follower is not None:
            await follower.close()
        group, self.user_group = self.user_group, None
        if group is not None:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:  # Redis gone: the subscription dies with the connection
                pass

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.follower is None:  # closing: ignore anything that raced the close
            return
        self.frames += 1
        # Each frame gets its own id, so two answers asked on one socket are told apart in the
        # logs, while a search for the connection's id still finds the whole socket's story.
        with translation.override(self.language), log_context.bound(request_id=f"{self.connection_id}.{self.frames}"):
            await self._handle(text_data, bytes_data)

    # ---- the session the socket was opened with ------------------------------------------------
    async def _current_epoch(self) -> int | None:
        """The user's session epoch; None when Redis cannot say (then the session is read each time)."""
        try:
            return await session_epochs.acurrent_epoch(self.hub.client, self.user_id)
        except redis.RedisError:
            return None

    async def _session_still_valid(self) -> bool:
        """(Every command.) One Redis GET while nothing happened to the user's sessions; a read of the
        session when something did, or every SESSION_RECHECK_SECONDS."""
        epoch = await self._current_epoch()
        recent = time.monotonic() - self.verified_at < settings.SESSION_RECHECK_SECONDS
        if epoch is not None and epoch == self.epoch and recent:
            return True
        try:
            # Its own key, or the one a password change in the same session moved it to.
            live = await in_db_pool(session_epochs.live_session)(self.session_key, self.user_id)
        except outage.OUTAGE_ERRORS as exc:  # cannot tell: the command meets the same outage
            outage.log_outage("socket session check", exc)
            return True
        if live is None:
            return False
        self.session_key, self.epoch, self.verified_at = live, epoch, time.monotonic()
        return True

    async def _flooding(self) -> bool:
        """One more rate_limited refusal: past SOCKET_REFUSALS_BEFORE_CLOSE in a row the client is not a page
        (a page waits after the first) but a flood, each frame of which would still cost a parse and an error
        frame. Close the socket: the next try costs a handshake, within SOCKETS_PER_USER."""
        self.refusals += 1
        limit = settings.SOCKET_REFUSALS_BEFORE_CLOSE
        if not limit or self.refusals <= limit:
            return False
        log.warning("socket closed: %d refused frames in a row", self.refusals)
        await self._leave()
        await self.close(code=CLOSE_FLOODING)
        return True

    async def _end_session(self) -> None:
        """The session ended: stop streaming at once and tell the page (it goes to the sign-in page)."""
        log.info("socket closed: its session ended")
        await self._leave()
        await self.close(code=CLOSE_NOT_LOGGED_IN)

    async def _handle(self, text_data: str | None, bytes_data: bytes | None) -> None:
        try:
            if not self.bucket.take():  # before anything costs a round trip
                raise ChatError("rate_limited", _("Too many frames; slow down."))
            if not await self._session_still_valid():
                await self._end_session()
                return
            frame = self._parse(text_data, bytes_data)
            kind = frame.get("type")
            handler = self.COMMANDS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ChatError("unknown_type", _("Unknown frame type “%(type)s”.") % {"type": _shown_type(kind)})
            log.debug("socket frame %s", kind)
            await handler(self, frame)
            self.refusals = 0
        except ChatError as exc:
            if exc.code == "rate_limited" and await self._flooding():
                return
            if exc.code != "rate_limited":
                self.refusals = 0
            await self.send_json(error_frame(exc.code, exc.message, exc.message_id))
        except Exception as exc:
            found = outage.outage_error(exc)
            if found is not None:  # the command's transaction rolled back: the user can simply retry
                outage.log_outage("socket command", found)
                await self.send_json(error_frame(
                    "unavailable", _("The database is unavailable right now. Try again in a few seconds.")))
                return
            # The user gets a stable message and an id; the log line with that id has the detail.
            error = errors.error_id()
            log.exception("socket command failed (error id %s)", error, extra={"error_id": error})
            await self.send_json(error_frame(
                "server_error", errors.with_error_id(_("Something went wrong on the server; try again."), error)))

    # ---- command helpers -------------------------------------------------------------------
    def _start_log_context(self) -> None:
        """The connection's id (the handshake's X-Request-ID when a trusted proxy passed it, else a new one)
        goes into this connection's log context (its asyncio task's own) and onto the scope, where audit
        events find it."""
        headers = dict(self.scope.get("headers") or [])
        given = log_context.trusted_request_id(headers.get(b"x-request-id", b"").decode("latin-1"))
        self.connection_id = (given or log_context.new_request_id())[:CONNECTION_ID_CHARS]
        self.frames = 0
        self.scope["audit_request_id"] = self.connection_id
        log_context.begin(request_id=self.connection_id)

    def _frame_scope(self) -> dict[str, Any]:
        """The scope as audit events of the current frame read it: with the frame's request id."""
        return {**self.scope, "audit_request_id": log_context.request_id() or self.connection_id}

    def _parse(self, text_data: str | None, bytes_data: bytes | None) -> dict[str, Any]:
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
            # To the pages of the answer's own conversation (a stop may name an answer of another one).
            await events.apublish(cancelled.conversation_id, done_frame(cancelled))

    async def _cmd_resume(self, frame: dict[str, Any]) -> None:
        # A resume re-reads and renders a whole answer: its own bucket, checked before any of that work.
        if not self.resumes.take():
            raise ChatError("rate_limited", _("Too many resume requests; slow down."))
        after_seq = frame.get("after_seq", 0)
        if not isinstance(after_seq, int) or isinstance(after_seq, bool) or after_seq < 0:
            raise ChatError("invalid_frame", _("after_seq must be a non-negative integer."))
        # Read and render on the pool: on channels' one shared thread a long answer would stall every socket.
        for reply in await in_db_pool(self._resume_frames)(frame.get("message_id")):
            await self.send_json(reply)

    def _resume_frames(self, message_id: Any) -> list[dict[str, Any]]:
        message = actions.resume_snapshot(self.scope["user"], self.conversation_id, message_id)
        # The row holds every delta published so far; the client replaces its partial text.
        return [message_frame(message)] + ([] if message.is_active else [done_frame(message)])

    COMMANDS = {
        "send": _cmd_send, "stop": _cmd_stop, "resume": _cmd_resume, "regenerate": _cmd_regenerate,
        "select": _cmd_select,
    }

    @database_sync_to_async
    def _admit(self) -> tuple[bool, bool]:
        """Whether the session still signs the user in, and whether the user owns the conversation."""
        live = session_epochs.live_session(self.session_key, self.user_id)
        if live is None:
            return False, False
        self.session_key = live
        try:
            actions.get_conversation(self.scope["user"], self.conversation_id)
            return True, True
        except ChatError:
            return True, False

    async def send_json(self, content: dict[str, Any]) -> None:
        if self.follower is None:  # closed, or closing because its session ended: nothing more goes out
            return
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

    async def session_recheck(self, event: dict[str, Any]) -> None:
        """A session of this user may have ended (chat/accounts/session_epochs.py): close if it was ours."""
        if self.follower is None:
            return
        ended = event.get("ended")
        if (ended and ended == session_epochs.fingerprint(self.session_key)) or not await self._session_still_valid():
            await self._end_session()
