"""Signals between the web tier and workers about answers in flight, over Redis.

- Stop: the web tier publishes the message id; the worker writing it sees it at the next
  token (the database flag stays the source of truth, checked at every save).
- Watching: each open socket keeps a short-lived key per conversation alive (through its event loop's
  SocketHub); a worker whose conversation nobody has watched for ABANDONED_AFTER_SECONDS cancels the answer.
- Writing: each worker process keeps a short-lived key per answer it is writing alive; an answer
  left `streaming` without one (its worker was killed) is failed by the sweep (chat/worker/replies.py).
  (Queued answers have a key of their own: chat/conversations/lifecycle.py.)
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref

import redis
import redis.asyncio as aredis
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
# The sockets of one event loop (daphne runs one per process) share one asyncio Redis client, whose pool opens
# at most this many connections (commands wait for a free one), and one task that refreshes the watched keys
# of their conversations and their sockets' leases (chat/conversations/socket_slots.py) in one round trip.
# (Each socket once had a client and a refreshing task of its own: 200 sockets, 200 Redis connections.)
HUB_CONNECTIONS = 8
HUB_CLIENT_NAME = "deepseek-sockets"  # how its connections show in Redis' CLIENT LIST


class SocketHub:
    """What the open sockets (and API streams) of one event loop share: `client`, and the keys kept alive for
    them. It lives while anyone holds it (`hold`/`release`); then its task ends and its connections close."""

    def __init__(self, url: str) -> None:
        self.url = url
        pool = aredis.BlockingConnectionPool.from_url(url, max_connections=HUB_CONNECTIONS, timeout=5,
                                                      socket_timeout=5, socket_connect_timeout=2,
                                                      client_name=HUB_CLIENT_NAME)
        self.client = aredis.Redis(connection_pool=pool)
        self.holders = 0
        self.watched: dict[str, int] = {}  # conversation id -> how many watch it here
        self.leases: dict[str, set[str]] = {}  # sorted-set key -> members kept alive here
        self._beating: asyncio.Task | None = None

    def hold(self) -> SocketHub:
        self.holders += 1
        if self._beating is None:
            self._beating = asyncio.create_task(self._beat())
        return self

    def release(self) -> None:
        self.holders -= 1
        if self.holders > 0:
            return
        loop = asyncio.get_running_loop()
        if _hubs.get(loop) is self:
            del _hubs[loop]
        if self._beating is not None:
            self._beating.cancel()  # it closes the client

    # ---- watched conversations ----------------------------------------------------------------------
    async def watch(self, conversation_id: object) -> None:
        """Watch the conversation from now on (its key is set at once, then refreshed) until `unwatch`."""
        key = str(conversation_id)
        self.watched[key] = self.watched.get(key, 0) + 1
        if self.watched[key] == 1:
            try:
                await self.client.set(_watch_key(key), "1", px=_watch_ttl_ms())
            except redis.RedisError:
                log.warning("could not set the watch of %s", key)

    def unwatch(self, conversation_id: object) -> None:
        """Stop refreshing the key (another process's socket may still keep it; else it expires)."""
        key = str(conversation_id)
        left = self.watched.get(key, 0) - 1
        if left > 0:
            self.watched[key] = left
        else:
            self.watched.pop(key, None)

    # ---- leases (members of sorted sets scored by when they expire) -------------------------------------
    def keep(self, key: str, member: str) -> None:
        self.leases.setdefault(key, set()).add(member)

    def drop(self, key: str, member: str) -> None:
        members = self.leases.get(key)
        if members is not None:
            members.discard(member)
            if not members:
                del self.leases[key]

    # ---- the one refreshing task ------------------------------------------------------------------------
    async def _beat(self) -> None:
        try:
            while True:
                await asyncio.sleep(max(0.05, min(settings.ABANDONED_AFTER_SECONDS, LEASE_SECONDS) / 3))
                await self._refresh()
                # redis-py 8.1 sometimes swallows a cancellation that lands inside a command (59 of 300 tries
                # cancelled within its first 2 ms): this task would live on, and the loop that closes it (a
                # test's, async_to_sync's) would wait for it forever. The request to cancel is still counted.
                if asyncio.current_task().cancelling():
                    raise asyncio.CancelledError
        finally:
            await self.client.aclose()

    async def _refresh(self) -> None:
        if not self.watched and not self.leases:
            return
        ttl_ms = _watch_ttl_ms()
        expires = time.time() + LEASE_SECONDS
        pipe = self.client.pipeline(transaction=False)
        for conversation_id in self.watched:
            pipe.set(_watch_key(conversation_id), "1", px=ttl_ms)
        for key, members in self.leases.items():
            pipe.zadd(key, dict.fromkeys(members, expires))
            pipe.expire(key, int(LEASE_SECONDS) + 1)
        try:
            await pipe.execute()
        except redis.RedisError:
            log.warning("could not refresh the watches and socket leases")


# A socket's lease (socket_slots.py) lasts this long without a refresh: a process that died leaves its
# sockets counted no longer than this.
LEASE_SECONDS = 60.0
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SocketHub] = weakref.WeakKeyDictionary()


def _watch_ttl_ms() -> int:
    return int(settings.ABANDONED_AFTER_SECONDS * 1000)


def socket_hub() -> SocketHub:
    """The running event loop's hub (a new one when none, or when settings.REDIS_URL changed); `hold` it."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.url != settings.REDIS_URL:
        hub = _hubs[loop] = SocketHub(settings.REDIS_URL)
    return hub


async def keep_watching(conversation_id: object) -> None:
    """Watch the conversation until cancelled (for code with no hub of its own to hold: tests, scripts)."""
    hub = socket_hub().hold()
    try:
        await hub.watch(conversation_id)
        if asyncio.current_task().cancelling():  # see SocketHub._beat
            raise asyncio.CancelledError
        await asyncio.Event().wait()
    finally:
        hub.unwatch(conversation_id)
        hub.release()


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
