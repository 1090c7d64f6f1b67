"""Signals between the web tier and workers about answers in flight, over Redis.

- Stop: the web tier publishes the message id; the worker writing it sees it at the next
  token (the database flag stays the source of truth, checked at every save).
- Watching: each open socket keeps a short-lived key per conversation alive; a worker whose
  conversation nobody has watched for ABANDONED_AFTER_SECONDS cancels the answer.
- Writing: each worker process keeps a short-lived key per answer it is writing alive; an answer
  left `streaming` without one (its worker was killed) is failed by the sweep (chat/worker/replies.py).
  (Queued answers have a key of their own: chat/conversations/lifecycle.py.)
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import redis
from django.conf import settings
from django.db import close_old_connections

from chat.core.redis_server import client as _client

log = logging.getLogger(__name__)
CANCEL_CHANNEL = "deepseek:cancel"


def _watch_key(conversation_id: object) -> str:
    return f"deepseek:watched:{conversation_id}"


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

    def writing(self) -> list[str]:
        """The answers this process is writing now."""
        with self._lock:
            return list(self._events)

    def _listen(self, ready: threading.Event) -> None:
        while True:
            try:
                # No read timeout (it waits for stops), redis-py's default connect timeout.
                pubsub = _client(socket_timeout=None, socket_connect_timeout=5).pubsub()
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
            # redis-py 8.1 sometimes swallows a cancellation that lands inside set() (59 of 300 tries
            # cancelled within its first 2 ms): this task would live on, and the loop that closes it (a
            # test's, async_to_sync's for an API request) would wait for it forever. The request to
            # cancel is still counted; honour it here.
            if asyncio.current_task().cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(max(0.05, ttl / 3))
    finally:
        await client.aclose()


def is_watched(conversation_id: object) -> bool:
    try:
        return bool(_client().exists(_watch_key(conversation_id)))
    except redis.RedisError:
        return True  # unknown: never cancel someone's answer because Redis hiccuped


def watched_among(conversation_ids: set[object] | list[object]) -> set[object]:
    """Which of these conversations someone watches, in one round trip (all of them when Redis cannot say)."""
    ids = list(conversation_ids)
    try:
        pipe = _client().pipeline(transaction=False)
        for conversation_id in ids:
            pipe.exists(_watch_key(conversation_id))
        return {c for c, found in zip(ids, pipe.execute(), strict=True) if found}
    except redis.RedisError:
        return set(ids)  # unknown: never cancel someone's answer because Redis hiccuped


# ---- writing -----------------------------------------------------------------------------------
WRITING_TTL_SECONDS = 20.0  # an answer whose key is this old has no live writer


def _writing_key(message_id: object) -> str:
    return f"deepseek:writing:{message_id}"


def mark_writing(message_ids: list[str], worker: str) -> None:
    """Refresh the keys of the answers this process writes (every few seconds, from a worker thread)."""
    if not message_ids:
        return
    try:
        pipe = _client().pipeline()
        for message_id in message_ids:
            pipe.set(_writing_key(message_id), worker, px=int(WRITING_TTL_SECONDS * 1000))
        pipe.execute()
    except redis.RedisError:
        log.warning("could not refresh the writing keys", exc_info=True)


def writers(message_ids: list[object]) -> dict[str, str | None]:
    """The worker writing each answer, or None where no live worker holds it. Raises RedisError
    when Redis cannot say (the sweep must then do nothing)."""
    if not message_ids:
        return {}
    values = _client().mget([_writing_key(m) for m in message_ids])
    return {str(m): (v.decode() if v else None) for m, v in zip(message_ids, values, strict=True)}


class WritingBeacon:
    """A worker process's thread: refreshes the writing keys of its answers every few seconds and
    runs `sweep` (chat.conversations.lifecycle.sweep: answers whose worker died, whose task was lost, or that
    waited too long) at start and every SWEEP_SECONDS."""

    BEAT_SECONDS = 5.0
    SWEEP_SECONDS = 10.0

    def __init__(self, worker: str, sweep) -> None:
        self.worker, self.sweep = worker, sweep
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writing-beacon", daemon=True)

    def start(self) -> WritingBeacon:
        self._thread.start()
        return self

    def _run(self) -> None:
        last_sweep = 0.0
        while True:
            mark_writing(cancel_watch.writing(), self.worker)
            if time.monotonic() - last_sweep >= self.SWEEP_SECONDS:
                last_sweep = time.monotonic()
                try:
                    close_old_connections()  # a connection broken by a database restart is replaced
                    self.sweep()
                except Exception:  # the database may be down for a moment; try again next time
                    log.warning("orphaned-answer sweep failed", exc_info=True)
            if self._stopped.wait(self.BEAT_SECONDS):
                return

    def stop(self) -> None:
        self._stopped.set()
