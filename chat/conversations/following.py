"""Following an answer as it is written (socket and SSE share it): frames parsed once, the row when they stop."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chat.conversations import liveness
from chat.conversations.frames import done_frame, group_name, message_frame
from chat.conversations.models import Message

log = logging.getLogger(__name__)

# A conversation's group (Redis pub/sub) delivers at most once: what is published while Redis restarts, or while
# a subscriber reconnects, is gone, an answer's last `message` and `done` included. So a reader that has heard
# nothing of an answer for CATCH_UP_SECONDS reads its row, which holds every delta published so far
# (chat/worker/replies.py saves before it publishes), and is given what it lacks: newer text, or the finished row.
# An answer being written flushes at least every STREAM_FLUSH_MAX_SECONDS; one a worker has not started yet
# (queued) is quiet too, and then costs one small query per interval. A page that missed frames can also
# ask (`resume`), so a socket reads every 3 s; an API response, which cannot, passes its own shorter
# interval (chat/api/stream.py).
CATCH_UP_SECONDS = 3.0


@dataclass(frozen=True)
class Heard:
    """What one frame (or a row read after a quiet spell) says about one answer."""

    kind: str  # "message" (a snapshot of the row), "delta", "done" or "error"
    message_id: str
    seq: int = 0
    content: str = ""
    reasoning: str = ""
    active: bool = True  # still being written
    error: str = ""

    @classmethod
    def of_row(cls, row: Message) -> Heard:
        """The row as the `message` frame built from it would say it."""
        return cls("message", str(row.id), row.seq, row.content, row.reasoning, row.is_active)


def parse(frame: dict[str, Any]) -> Heard | None:
    """The answer a frame is about and what it says; None for any other frame (a user's message, say)."""
    kind = frame.get("type")
    if kind == "message":
        body = frame.get("message") or {}
        if body.get("role") != Message.Role.ASSISTANT or "id" not in body:
            return None
        return Heard(kind, str(body["id"]), body.get("seq") or 0, body.get("content") or "",
                     body.get("reasoning") or "", body.get("status") in Message.ACTIVE)
    if kind not in ("delta", "done", "error") or "message_id" not in frame:
        return None
    message_id = str(frame["message_id"])
    if kind == "delta":
        return Heard(kind, message_id, frame.get("seq") or 0, frame.get("content") or "", frame.get("reasoning") or "")
    if kind == "done":
        return Heard(kind, message_id, active=False)
    return Heard(kind, message_id, error=frame.get("message") or "")


@dataclass
class Followed:
    seq: int  # the newest text the reader has
    heard_at: float  # time.monotonic() when the reader last heard of the answer


class Follower:
    """The answers one reader follows in one conversation: a chat socket each answer it tells its page of,
    an API response its one answer. It notes what reaches the reader (`heard`), and reads the rows of the
    answers that went quiet."""

    def __init__(self, conversation_id: Any, quiet_seconds: float | None = None) -> None:
        self.conversation_id = conversation_id
        self.quiet_seconds = CATCH_UP_SECONDS if quiet_seconds is None else quiet_seconds
        self.active: dict[str, Followed] = {}
        self._layer: Any = None
        self._channel: str | None = None
        self._receiver: asyncio.Future | None = None
        self._hub: liveness.SocketHub | None = None

    # ---- the conversation's frames (and keeping it watched, so the worker goes on writing) ---------------
    async def subscribe(self, channel: str | None = None) -> None:
        """Join the conversation's group with `channel` (a consumer's own), or with a new one read through
        next_frame(), and keep the conversation watched. Join before an answer is queued, so that no frame
        of it can come before we listen."""
        self._layer = get_channel_layer()
        channel = channel or await self._layer.new_channel("follow.")
        await self._layer.group_add(group_name(self.conversation_id), channel)
        self._channel = channel
        self._hub = liveness.socket_hub().hold()
        await self._hub.watch(self.conversation_id)

    async def next_frame(self, timeout: float) -> dict[str, Any] | None:
        """(A follower with a channel of its own.) The next frame, or None after `timeout` seconds without."""
        if self._receiver is None:
            self._receiver = asyncio.ensure_future(self._layer.receive(self._channel))
        # Not wait_for: cancelling a pending receive would unsubscribe the channel.
        done, _ = await asyncio.wait({self._receiver}, timeout=timeout)
        if not done:
            return None
        event, self._receiver = self._receiver.result(), None
        return event.get("frame") if isinstance(event, dict) else None

    async def close(self) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.unwatch(self.conversation_id)
            hub.release()
        if self._receiver is not None:
            self._receiver.cancel()  # the layer unsubscribes a channel whose receive is cancelled
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                await self._layer.group_discard(group_name(self.conversation_id), channel)
            except Exception:  # Redis gone: the subscription dies with the connection
                pass

    # ---- what the reader has ----------------------------------------------------------------------
    def follow(self, message_id: Any, now: float | None = None) -> None:
        """Follow an answer the reader has nothing of yet."""
        self._seen(str(message_id), 0, time.monotonic() if now is None else now)

    def heard(self, frame: dict[str, Any] | Heard, now: float | None = None) -> Heard | None:
        """Note a frame that reached the reader (an answer's `message` or delta: followed, at the newest seq
        yet; its end: no longer followed); returns what it says."""
        heard = parse(frame) if isinstance(frame, dict) else frame
        if heard is None or heard.kind == "error":
            return heard
        if heard.active:
            self._seen(heard.message_id, heard.seq, time.monotonic() if now is None else now)
        else:
            self.active.pop(heard.message_id, None)
        return heard

    def _seen(self, message_id: str, seq: int, now: float) -> None:
        known = self.active.get(message_id)
        self.active[message_id] = Followed(max(seq, known.seq if known else 0), now)

    def seq_of(self, message_id: str) -> int:
        known = self.active.get(message_id)
        return known.seq if known else 0

    def quiet(self, now: float | None = None) -> list[str]:
        """The answers not heard of for an interval."""
        now = time.monotonic() if now is None else now
        return [mid for mid, f in self.active.items() if now - f.heard_at >= self.quiet_seconds]

    # ---- catching up from the rows ----------------------------------------------------------------
    def row(self, message_id: str) -> Message | None:
        """(Database thread.) The answer's row, looked up in this conversation only."""
        return Message.objects.filter(conversation_id=self.conversation_id, id=message_id).first()

    def catch_up(self, message_ids: list[str]) -> list[dict[str, Any]]:
        """(Database thread.) The frames that bring a page up to the rows: a snapshot with newer text (what a
        `resume` is answered with), or the finished row and its `done`. A quiet answer whose row has nothing
        new is heard of now, so the next read is one interval later."""
        rows = {str(m.id): m for m in Message.objects.filter(conversation_id=self.conversation_id,
                                                             id__in=message_ids)}
        frames: list[dict[str, Any]] = []
        now = time.monotonic()
        for mid in message_ids:
            row, followed = rows.get(mid), self.active.get(mid)
            if followed is None:  # finished by a frame that came while we read
                continue
            if row is None:  # deleted with its conversation or branch: nothing more will come
                self.active.pop(mid, None)
                continue
            if row.seq > followed.seq or not row.is_active:
                frames.append(message_frame(row))
            if not row.is_active:
                frames.append(done_frame(row))
            followed.heard_at = now
        return frames

    async def keep_caught_up(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """(A chat socket's task.) Frames of an answer stopped coming (lost while Redis restarted, say):
        `send` the page what the row has that it lacks."""
        while True:
            await asyncio.sleep(self.quiet_seconds / 2)
            quiet = self.quiet()
            if not quiet:
                continue
            try:
                frames = await database_sync_to_async(self.catch_up)(quiet)
            except Exception:  # the database is down: try again next interval
                log.warning("catching up conversation %s failed", self.conversation_id, exc_info=True)
                continue
            for frame in frames:
                await send(frame)
