"""The watch a socket or an API stream keeps on its conversation ends when it is cancelled, even when
redis-py swallows the cancellation (redis-py 8.1 does, now and then, inside a command)."""
from __future__ import annotations

import asyncio

import redis.asyncio as aredis

from chat.conversations import liveness


async def test_a_cancelled_watch_ends_even_when_redis_swallowed_the_cancellation(monkeypatch, redis_url, settings):
    settings.REDIS_URL = redis_url
    entered = asyncio.Event()

    async def swallowing_set(self, *args, **kwargs):  # what redis-py does when the cancel lands badly
        entered.set()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return None

    monkeypatch.setattr(aredis.Redis, "set", swallowing_set)
    watching = asyncio.create_task(liveness.keep_watching("a-conversation"))
    await asyncio.wait_for(entered.wait(), 5)
    watching.cancel()
    done, _ = await asyncio.wait([watching], timeout=2)  # not after its 20 s sleep, and not never
    assert done == {watching} and watching.cancelled()


async def test_a_watch_really_refreshes_its_key_until_cancelled(redis_url, settings, broker):
    settings.REDIS_URL = redis_url
    settings.ABANDONED_AFTER_SECONDS = 0.3
    watching = asyncio.create_task(liveness.keep_watching("another-conversation"))
    await asyncio.sleep(0.5)  # past the key's lifetime: only the refreshes keep it
    assert await asyncio.to_thread(liveness.is_watched, "another-conversation")
    watching.cancel()
    await asyncio.wait([watching], timeout=2)
    await asyncio.sleep(0.4)
    assert not await asyncio.to_thread(liveness.is_watched, "another-conversation")
