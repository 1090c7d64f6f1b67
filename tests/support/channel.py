"""Listening to a conversation's group from a synchronous test, as a page's socket would."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from channels.layers import get_channel_layer

from chat.conversations.frames import group_name


class GroupListener:
    """Joins the conversation's group on a thread of its own and keeps every frame sent to it."""

    def __init__(self, conversation_id: Any) -> None:
        self.group = group_name(conversation_id)
        self.frames: list[dict[str, Any]] = []
        self._joined = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._task = self._loop.create_task(self._listen())
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    async def _listen(self) -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(self.group, channel)
        self._joined.set()
        try:
            while True:  # until cancelled (a receive cut short by a timeout could lose a frame)
                self.frames.append((await layer.receive(channel))["frame"])
        finally:
            await layer.group_discard(self.group, channel)

    def __enter__(self) -> GroupListener:
        self._thread.start()
        assert self._joined.wait(30), "could not join the group"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)

    def wait_for(self, found: Callable[[list[dict[str, Any]]], Any], deadline: float = 60.0) -> Any:
        """Poll the frames heard until `found` returns something true; the deadline only guards against hanging."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            value = found(list(self.frames))
            if value:
                return value
            time.sleep(0.02)
        raise AssertionError(f"never heard what was awaited; frames: {self.frames!r}")
