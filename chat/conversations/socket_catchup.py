"""Catching a chat socket up on an answer whose frames stopped coming.

A conversation's group (Redis pub/sub) delivers at most once: what is published while Redis
restarts, or while a subscriber reconnects, is gone, an answer's last `message` and `done`
included, and the page would wait for them forever. So a socket that saw an answer start and has
heard nothing of it for QUIET_SECONDS reads the row (which holds every delta published so far:
chat/replies.py saves before it publishes) and sends what the page missed: a snapshot with newer
text (the frame a `resume` is answered with), or the finished row and its `done`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from chat.conversations.frames import done_frame, message_frame
from chat.conversations.models import Message

QUIET_SECONDS = 3.0  # an answer being written flushes every STREAM_FLUSH_SECONDS; a worker that
# has not started it yet (queued) makes it quiet too, and then costs one small query per interval


@dataclass
class Followed:
    seq: int
    heard_at: float


class CatchUp:
    """The active answers one socket has told its page about, and when each was last heard of."""

    def __init__(self, quiet_seconds: float | None = None) -> None:
        self.quiet_seconds = QUIET_SECONDS if quiet_seconds is None else quiet_seconds
        self.active: dict[str, Followed] = {}

    def heard(self, frame: dict[str, Any], now: float | None = None) -> None:
        """Note a frame on its way to the page."""
        now = time.monotonic() if now is None else now
        kind = frame.get("type")
        if kind == "message":
            body = frame.get("message") or {}
            if body.get("role") != "assistant" or "id" not in body:
                return
            if body.get("status") in Message.ACTIVE:
                self._seen(str(body["id"]), body.get("seq") or 0, now)
            else:
                self.active.pop(str(body["id"]), None)
        elif kind == "delta" and "message_id" in frame:
            self._seen(str(frame["message_id"]), frame.get("seq") or 0, now)
        elif kind == "done" and "message_id" in frame:
            self.active.pop(str(frame["message_id"]), None)

    def _seen(self, message_id: str, seq: int, now: float) -> None:
        known = self.active.get(message_id)
        self.active[message_id] = Followed(max(seq, known.seq if known else 0), now)

    def quiet(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        return [mid for mid, f in self.active.items() if now - f.heard_at >= self.quiet_seconds]

    def catch_up(self, conversation_id: Any, message_ids: list[str]) -> list[dict[str, Any]]:
        """(Database thread.) The frames that bring the page up to the rows; a quiet answer whose row
        has nothing new is heard of now, so the next read is one interval later."""
        rows = {str(m.id): m for m in Message.objects.filter(conversation_id=conversation_id, id__in=message_ids)}
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
