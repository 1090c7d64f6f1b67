"""Which queue a conversation's next answer goes to, so its turns reach the worker that holds
its KV cache: each worker also consumes a private queue and announces itself with a heartbeat;
a conversation goes to the live worker its id hashes to (rendezvous hashing, so workers coming
and going move only their own share), or to the model's shared queue when none is live."""
from __future__ import annotations

import hashlib
import logging
import threading
import time

import redis

from chat.core.redis_server import client as _client

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 5.0
LIVE_FOR_SECONDS = 15.0  # a worker silent this long is treated as gone


def _key(queue: str) -> str:
    return f"deepseek:workers:{queue}"


def private_queue(queue: str, hostname: str) -> str:
    return f"{queue}@{hostname}"


def live_workers(queue: str, client: redis.Redis | None = None) -> list[str]:
    client = client or _client()
    names = client.zrangebyscore(_key(queue), time.time() - LIVE_FOR_SECONDS, "+inf")
    return sorted(n.decode() for n in names)


def queue_for(queue: str, conversation_id: object) -> str:
    """The private queue of the conversation's worker, or the shared queue."""
    try:
        workers = live_workers(queue)
    except redis.RedisError:
        return queue  # the shared queue works without knowing who is alive
    if not workers:
        return queue

    def score(worker: str) -> bytes:
        return hashlib.sha256(f"{conversation_id}|{worker}".encode()).digest()

    return private_queue(queue, max(workers, key=score))


def requeue_from_silent_workers(client: redis.Redis, queue: str, now: float | None = None) -> int:
    """Move tasks waiting on the private queues of workers gone silent back to the shared queue
    (any live worker takes them), and forget those workers. Returns how many tasks moved."""
    now = time.time() if now is None else now
    moved = 0
    for name in client.zrangebyscore(_key(queue), "-inf", now - LIVE_FOR_SECONDS):
        hostname = name.decode()
        # Claim the dead worker first, so two live workers do not both sweep its queue.
        if not client.zrem(_key(queue), hostname):
            continue
        orphaned = private_queue(queue, hostname)
        while client.lmove(orphaned, queue, "RIGHT", "LEFT") is not None:
            moved += 1
        if moved:
            log.warning("moved %d queued answers of silent worker %s to %s", moved, hostname, queue)
    return moved


class Heartbeat:
    """Announces a worker on its models' queues until the process ends."""

    def __init__(self, hostname: str, queues: list[str]) -> None:
        self.hostname, self.queues = hostname, queues
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def _beat(self) -> None:
        try:
            client = _client()
            now = time.time()
            for queue in self.queues:
                client.zadd(_key(queue), {self.hostname: now})
                requeue_from_silent_workers(client, queue, now)
        except redis.RedisError:
            log.warning("heartbeat to Redis failed", exc_info=True)

    def _run(self) -> None:
        while not self._stopped.wait(HEARTBEAT_SECONDS):
            self._beat()

    def stop(self) -> None:
        """Leave at once (a clean shutdown), rather than after LIVE_FOR_SECONDS."""
        self._stopped.set()
        try:
            client = _client()
            for queue in self.queues:
                client.zrem(_key(queue), self.hostname)
        except redis.RedisError:
            pass
