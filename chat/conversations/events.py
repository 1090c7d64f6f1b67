"""Publishing frames to a conversation's channel-layer group, from async code or worker threads.

Worker threads publish through one long-lived event loop per process: `async_to_sync` per
token costs ~5 ms and a fresh Redis connection each time (shared/FACTS.md), this ~0.2 ms.
Delivery is at-most-once; the Message row is the source of truth for clients that resume.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from channels.layers import get_channel_layer

from chat.conversations.frames import group_name

log = logging.getLogger(__name__)
EVENT_TYPE = "chat.frame"  # handled by ChatConsumer.chat_frame


async def apublish(conversation_id: Any, frame: dict[str, Any]) -> None:
    """Send a frame to everyone watching the conversation (from async code)."""
    layer = get_channel_layer()
    await layer.group_send(group_name(conversation_id), {"type": EVENT_TYPE, "frame": frame})


class _LoopPublisher:
    """A daemon thread running one event loop that all publishing threads of the process share."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="frame-publisher", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def publish(self, conversation_id: Any, frame: dict[str, Any], timeout: float = 5.0) -> bool:
        """Send and wait for Redis to take it, so one stream's frames leave in order."""
        future = asyncio.run_coroutine_threadsafe(apublish(conversation_id, frame), self._ensure_loop())
        try:
            future.result(timeout)
            return True
        except Exception:  # the row still has the text; a resuming client catches up from it
            future.cancel()
            log.warning("could not publish %s frame to conversation %s", frame.get("type"), conversation_id,
                        exc_info=True)
            return False

    def publish_many(self, frames: list[tuple[Any, dict[str, Any]]], timeout: float = 5.0) -> int:
        """Send frames to several conversations at once (one hand-off to the loop, the sends concurrent);
        each conversation's frames keep their order. Returns how many were taken."""
        by_conversation: dict[Any, list[dict[str, Any]]] = {}
        for conversation_id, frame in frames:
            by_conversation.setdefault(conversation_id, []).append(frame)

        async def in_order(conversation_id: Any, batch: list[dict[str, Any]]) -> int:
            for frame in batch:
                await apublish(conversation_id, frame)
            return len(batch)

        async def all_of() -> list[Any]:
            return await asyncio.gather(*(in_order(c, b) for c, b in by_conversation.items()),
                                        return_exceptions=True)

        future = asyncio.run_coroutine_threadsafe(all_of(), self._ensure_loop())
        try:
            outcomes = future.result(timeout)
        except Exception:  # the rows still have the text; resuming clients catch up from them
            future.cancel()
            log.warning("could not publish %d frames", len(frames), exc_info=True)
            return 0
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            log.warning("could not publish frames to %d of %d conversations", len(failed), len(outcomes),
                        exc_info=failed[0])
        return sum(o for o in outcomes if isinstance(o, int))


_publisher = _LoopPublisher()
# A process forked after the loop started (e.g. a server started by a test that already ran a
# worker) inherits the loop but not its thread: it must start its own, or every publish waits out.
os.register_at_fork(after_in_child=lambda: setattr(_publisher, "_loop", None))


def publish(conversation_id: Any, frame: dict[str, Any]) -> bool:
    """Send a frame to the conversation's watchers from synchronous code (worker threads)."""
    return _publisher.publish(conversation_id, frame)


def publish_many(frames: list[tuple[Any, dict[str, Any]]]) -> int:
    """Send frames to several conversations' watchers at once, from synchronous code (the tick writer)."""
    return _publisher.publish_many(frames)
