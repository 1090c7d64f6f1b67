"""Signals between the web tier and workers about answers in flight, over Redis.

- Stop: the web tier publishes the message id; the worker writing it sees it at the next
  token (the database flag stays the source of truth, checked at every save).
- Watching: each open socket keeps a short-lived key per conversation alive; a worker whose
  conversation nobody has watched for ABANDONED_AFTER_SECONDS cancels the answer.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import redis
from django.conf import settings

from deepseek_web.redis_server import shared_client

log = logging.getLogger(__name__)
CANCEL_CHANNEL = "deepseek:cancel"


def _watch_key(conversation_id: object) -> str:
    return f"deepseek:watched:{conversation_id}"


def _client() -> redis.Redis:
    return shared_client(settings.REDIS_URL)


# ---- stop ------------------------------------------------------------------------------------
def publish_cancel(message_id: object) -> None:
    try:
        _client().publish(CANCEL_CHANNEL, str(message_id))
    except redis.RedisError:  # the worker still sees the database flag at its next save
        log.warning("could not publish the stop of %s", message_id, exc_info=True)


class CancelWatch:
    """One subscriber thread per worker process; generations register the ids they write."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, message_id: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events[message_id] = event
            if self._thread is None or not self._thread.is_alive():
                ready = threading.Event()
                self._thread = threading.Thread(target=self._listen, args=(ready,), name="cancel-watch", daemon=True)
                self._thread.start()
                ready.wait(5)  # subscribed before the generation starts, so no stop is missed
        return event

    def unwatch(self, message_id: str) -> None:
        with self._lock:
            self._events.pop(message_id, None)

    def _listen(self, ready: threading.Event) -> None:
        while True:
            try:
                pubsub = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=None).pubsub()
                pubsub.subscribe(CANCEL_CHANNEL)
                ready.set()
                for item in pubsub.listen():
                    if item.get("type") != "message":
                        continue
                    with self._lock:
                        event = self._events.get(item["data"].decode())
                    if event is not None:
                        event.set()
            except redis.RedisError:
                log.warning("cancel subscriber lost Redis; reconnecting")
                time.sleep(1)


cancel_watch = CancelWatch()


# ---- watching ----------------------------------------------------------------------------------
async def keep_watching(conversation_id: object) -> None:
    """Run while a socket is open: refresh the conversation's watched key."""
    import redis.asyncio as aredis

    ttl = settings.ABANDONED_AFTER_SECONDS
    client = aredis.Redis.from_url(settings.REDIS_URL)
    try:
        while True:
            try:
                await client.set(_watch_key(conversation_id), "1", px=int(ttl * 1000))
            except redis.RedisError:
                log.warning("could not refresh the watch of %s", conversation_id)
            await asyncio.sleep(max(0.05, ttl / 3))
    finally:
        await client.aclose()


def is_watched(conversation_id: object) -> bool:
    try:
        return bool(_client().exists(_watch_key(conversation_id)))
    except redis.RedisError:
        return True  # unknown: never cancel someone's answer because Redis hiccuped
