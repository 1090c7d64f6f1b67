"""One answer followed as text for an API response (streamed or not), on the socket's follower.

chat/conversations/following.py subscribes, parses the frames and reads the row when they stop; here a
gap in the seq numbers is repaired from the row at once (an API client cannot resume), and the text
becomes what the response sends: Text, a keep-alive Tick, Finished, or a QueueTimeout.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async

from chat.conversations.following import Follower, Heard, parse
from chat.conversations.models import Message


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


# An API client cannot ask for what it missed (a page sends `resume`): its response reads the row after 1 s
# without a frame, where a socket waits 3 s (chat.conversations.following.CATCH_UP_SECONDS). A row that had
# nothing new (the answer still queued) is read again after twice as long, up to QUIET_MAX_SECONDS: the
# frames are the live stream, the row only what they may have lost (the worker sends text at least every
# STREAM_FLUSH_MAX_SECONDS while it writes).
CATCH_UP_SECONDS = 1.0
QUIET_MAX_SECONDS = 8.0


class AnswerFollower:
    """One API response's answer, followed as text (chat/conversations/following.py): what the client has
    been sent, and what it lacks."""

    def __init__(self, conversation_id: Any) -> None:
        self.conversation_id = conversation_id
        self.follower = Follower(conversation_id, quiet_seconds=CATCH_UP_SECONDS)
        self.message_id: str | None = None
        self.sent_content = ""
        self.sent_reasoning = ""
        self.error = ""

    async def subscribe(self) -> None:
        """Join the group before the answer is queued, so no frame can come before we listen."""
        await self.follower.subscribe()

    def bind(self, message_id: Any) -> None:
        self.message_id = str(message_id)
        self.follower.follow(self.message_id)

    async def close(self) -> None:
        await self.follower.close()

    # ---- text the client lacks ----------------------------------------------------------------------
    def _snapshot(self, content: str, reasoning: str) -> Text | None:
        """The text past what was sent (text only ever grows; a moderation cut empties it, and then nothing
        more is sent)."""
        new = Text()
        if content.startswith(self.sent_content):
            new.content, self.sent_content = content[len(self.sent_content):], content
        if reasoning.startswith(self.sent_reasoning):
            new.reasoning, self.sent_reasoning = reasoning[len(self.sent_reasoning):], reasoning
        return new if (new.content or new.reasoning) else None

    def _take(self, heard: Heard) -> Text | None:
        """The text of the next delta, or of a snapshot newer than what was sent (a repeat adds nothing)."""
        have = self.follower.seq_of(self.message_id)
        text = None
        if heard.kind == "delta" and heard.seq == have + 1:
            self.sent_content += heard.content
            self.sent_reasoning += heard.reasoning
            text = Text(heard.content, heard.reasoning)
        elif heard.kind == "message" and heard.seq > have:
            text = self._snapshot(heard.content, heard.reasoning)
        self.follower.heard(heard)
        return text

    async def _row(self) -> Message | None:
        return await database_sync_to_async(self.follower.row)(self.message_id)

    async def _finish(self, row: Message | None) -> AsyncIterator[Text | Finished]:
        if row is not None:
            missing = self._snapshot(row.content, row.reasoning)  # the end's text, whatever its seq
            if missing:
                yield missing
        yield Finished(row, self.error or (row.error if row is not None else ""))

    # ---- the stream -----------------------------------------------------------------------------
    async def events(self, keepalive_seconds: float,
                     queue_timeout: float) -> AsyncIterator[Text | Tick | Finished | QueueTimeout]:
        """Text as it comes, a Tick every `keepalive_seconds` of silence, and one Finished (or a
        QueueTimeout when no worker took the answer within `queue_timeout` seconds)."""
        started = last_sign = time.monotonic()
        while True:
            frame = await self.follower.next_frame(min(self.follower.quiet_seconds, keepalive_seconds))
            if frame is not None:
                heard = parse(frame)
                if heard is None or heard.message_id != self.message_id:
                    continue
                if heard.kind == "error":
                    self.error = heard.error
                    continue
                if heard.kind != "delta" or heard.seq <= self.follower.seq_of(self.message_id) + 1:
                    text = self._take(heard)
                    self.follower.quiet_seconds = CATCH_UP_SECONDS  # the stream is live
                    if text:
                        last_sign = time.monotonic()
                        yield text
                    if not heard.active:  # its final message, or done
                        async for item in self._finish(await self._row()):
                            yield item
                        return
                    continue
                # A gap in the seq numbers: frames were lost, and the row has their text.
            elif not self.follower.quiet():
                if time.monotonic() - last_sign >= keepalive_seconds:
                    last_sign = time.monotonic()
                    yield Tick()
                continue
            row = await self._row()
            if row is None or not row.is_active:
                async for item in self._finish(row):
                    yield item
                return
            if row.status == Message.Status.PENDING and time.monotonic() - started > queue_timeout:
                yield QueueTimeout()
                return
            text = self._take(Heard.of_row(row))
            if text:
                last_sign = time.monotonic()
                yield text
                continue
            self.follower.quiet_seconds = min(self.follower.quiet_seconds * 2, max(QUIET_MAX_SECONDS, CATCH_UP_SECONDS))
            if time.monotonic() - last_sign >= keepalive_seconds:
                last_sign = time.monotonic()
                yield Tick()
