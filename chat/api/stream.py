"""Following one answer while a worker writes it, for an API response (streamed or not).

Frames come from the conversation's channel-layer group, which delivers at most once: a gap in
the seq numbers, or a quiet spell, is repaired from the Message row, which holds every delta
published so far (chat/replies.py saves before it publishes). The follower also keeps the
conversation "watched", so the worker does not cancel an answer nobody reads.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chat.conversations import liveness
from chat.conversations.frames import group_name
from chat.conversations.models import Message

POLL_SECONDS = 1.0  # after this long without a frame, read the row (a frame may have been lost)


@dataclass
class Text:
    content: str = ""
    reasoning: str = ""


@dataclass
class Tick:
    """Nothing arrived for a keep-alive interval."""


@dataclass
class QueueTimeout:
    """No worker took the answer in time (it is still pending)."""


@dataclass
class Finished:
    message: Message | None  # None: the row is gone
    error: str = ""  # the worker's error text when it failed


def _message_id_of(frame: dict[str, Any]) -> Any:
    if frame.get("type") == "message":
        return (frame.get("message") or {}).get("id")
    return frame.get("message_id")


class AnswerFollower:
    def __init__(self, conversation_id: Any) -> None:
        self.conversation_id = conversation_id
        self.message_id: str | None = None
        self.seq = 0
        self.sent_content = ""
        self.sent_reasoning = ""
        self.error = ""
        self._channel: str | None = None
        self._receiver: asyncio.Future | None = None
        self._watching: asyncio.Task | None = None

    async def subscribe(self) -> None:
        """Join the group before the answer is queued, so no frame can come before we listen."""
        self._layer = get_channel_layer()
        self._channel = await self._layer.new_channel("api.")
        await self._layer.group_add(group_name(self.conversation_id), self._channel)
        self._watching = asyncio.create_task(liveness.keep_watching(self.conversation_id))

    def bind(self, message_id: Any) -> None:
        self.message_id = str(message_id)

    async def close(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
        if self._receiver is not None:
            self._receiver.cancel()  # the layer unsubscribes a channel whose receive is cancelled
        if self._channel is not None:
            try:
                await self._layer.group_discard(group_name(self.conversation_id), self._channel)
            except Exception:  # Redis gone: the subscription dies with the connection
                pass

    # ---- repairs from the row ----------------------------------------------------------------
    def _catch_up(self, content: str, reasoning: str, seq: int) -> Text | None:
        """The text the client has not seen, from a snapshot at `seq` (text only ever grows; a
        moderation cut empties it, and then nothing more is sent)."""
        if seq <= self.seq:
            return None
        self.seq = seq
        new = Text()
        if content.startswith(self.sent_content):
            new.content, self.sent_content = content[len(self.sent_content):], content
        if reasoning.startswith(self.sent_reasoning):
            new.reasoning, self.sent_reasoning = reasoning[len(self.sent_reasoning):], reasoning
        return new if (new.content or new.reasoning) else None

    @database_sync_to_async
    def _row(self) -> Message | None:
        return Message.objects.filter(id=self.message_id).first()

    async def _finish(self) -> AsyncIterator[Text | Finished]:
        row = await self._row()
        if row is not None:
            missing = self._catch_up(row.content, row.reasoning, max(row.seq, self.seq + 1))
            if missing:
                yield missing
        yield Finished(row, self.error or (row.error if row is not None else ""))

    # ---- the stream -----------------------------------------------------------------------------
    async def _next_frame(self, timeout: float) -> dict[str, Any] | None:
        if self._receiver is None:
            self._receiver = asyncio.ensure_future(self._layer.receive(self._channel))
        # Not wait_for: cancelling a pending receive would unsubscribe the channel.
        done, _ = await asyncio.wait({self._receiver}, timeout=timeout)
        if not done:
            return None
        event, self._receiver = self._receiver.result(), None
        return event.get("frame") if isinstance(event, dict) else None

    async def events(self, keepalive_seconds: float,
                     queue_timeout: float) -> AsyncIterator[Text | Tick | Finished | QueueTimeout]:
        """Text as it comes, a Tick every `keepalive_seconds` of silence, and one Finished (or a
        QueueTimeout when no worker took the answer within `queue_timeout` seconds)."""
        started = last_sign = time.monotonic()
        while True:
            frame = await self._next_frame(min(POLL_SECONDS, keepalive_seconds))
            if frame is None:
                row = await self._row()
                if row is None or not row.is_active:
                    async for item in self._finish():
                        yield item
                    return
                if row.status == Message.Status.PENDING and time.monotonic() - started > queue_timeout:
                    yield QueueTimeout()
                    return
                missing = self._catch_up(row.content, row.reasoning, row.seq)
                if missing:
                    last_sign = time.monotonic()
                    yield missing
                elif time.monotonic() - last_sign >= keepalive_seconds:
                    last_sign = time.monotonic()
                    yield Tick()
                continue
            if _message_id_of(frame) != self.message_id:
                continue
            kind = frame.get("type")
            if kind == "delta":
                if frame["seq"] == self.seq + 1:
                    self.seq = frame["seq"]
                    self.sent_content += frame["content"]
                    self.sent_reasoning += frame["reasoning"]
                    last_sign = time.monotonic()
                    yield Text(frame["content"], frame["reasoning"])
                elif frame["seq"] > self.seq:  # frames were lost: the row has their text
                    row = await self._row()
                    missing = row and self._catch_up(row.content, row.reasoning, row.seq)
                    if missing:
                        last_sign = time.monotonic()
                        yield missing
            elif kind == "message":
                body = frame["message"]
                missing = self._catch_up(body["content"], body["reasoning"], body["seq"])
                if missing:
                    yield missing
            elif kind == "error":
                self.error = frame.get("message", "")
            elif kind == "done":
                async for item in self._finish():
                    yield item
                return
