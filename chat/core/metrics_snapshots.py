"""Metric snapshots shared through Redis: each process pushes its registry every few seconds, and
the web's /metrics shows every live process's values side by side, with a `process` label.

Why per process rather than summed: a process that stops takes its counters with it; a sum would
then go down, which Prometheus reads as a counter reset and counts the whole remaining total as new
(a spike in rate()). Separate series simply end. Sum in the query:
`sum by (model) (rate(deepseek_generated_tokens_total[5m]))`.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from chat.core import redis_server
from chat.core.metrics_registry import REGISTRY

log = logging.getLogger(__name__)
PUSH_SECONDS = 5.0
TTL_SECONDS = 30  # a snapshot not refreshed this long is a process gone
_KEY_PREFIX = "deepseek:metrics:"
_INDEX = "deepseek:metrics:processes"  # process → time of its last push (a sorted set)


_names: dict[int, str] = {}


def process_name() -> str:
    """`host:pid:nonce`, stable for the process: containers sharing the host's name (host
    networking) all run as pid 1, so the nonce keeps them apart."""
    pid = os.getpid()
    if pid not in _names:
        _names[pid] = f"{socket.gethostname()}:{pid}:{secrets.token_hex(2)}"
    return _names[pid]


def client() -> redis.Redis:
    """A client with short timeouts: a scrape or a push never waits long on a sick Redis."""
    return redis_server.client(socket_timeout=1, socket_connect_timeout=1)


# ---- snapshots ------------------------------------------------------------------------------------
def snapshot(registry: CollectorRegistry = REGISTRY) -> list[dict[str, Any]]:
    """The registry's families as JSON-ready dicts (without `_created` samples: per-process noise)."""
    families = []
    for family in registry.collect():
        samples = [[s.name, s.labels, s.value] for s in family.samples if not s.name.endswith("_created")]
        families.append({"name": family.name, "type": family.type, "help": family.documentation,
                         "samples": samples})
    return families


def push(redis_client: redis.Redis, process: str, families: list[dict[str, Any]], now: float | None = None) -> None:
    pipe = redis_client.pipeline(transaction=False)
    pipe.set(_KEY_PREFIX + process, json.dumps(families, separators=(",", ":")), ex=TTL_SECONDS)
    pipe.zadd(_INDEX, {process: time.time() if now is None else now})
    pipe.execute()


def forget(redis_client: redis.Redis, process: str) -> None:
    pipe = redis_client.pipeline(transaction=False)
    pipe.delete(_KEY_PREFIX + process)
    pipe.zrem(_INDEX, process)
    pipe.execute()


def pushed_snapshots(redis_client: redis.Redis, now: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every live process's last snapshot, by process name."""
    now = time.time() if now is None else now
    redis_client.zremrangebyscore(_INDEX, "-inf", now - TTL_SECONDS)
    names = [n.decode() for n in redis_client.zrange(_INDEX, 0, -1)]
    if not names:
        return {}
    found = {}
    for name, raw in zip(names, redis_client.mget([_KEY_PREFIX + n for n in names]), strict=True):
        if raw is not None:
            try:
                found[name] = json.loads(raw)
            except ValueError:
                log.warning("unreadable metrics snapshot from %s", name)
    return found


def merged(snapshots: dict[str, list[dict[str, Any]]]) -> Iterator[Metric]:
    """One family per name, holding every process's samples with a `process` label."""
    families: dict[str, Metric] = {}
    for process, payload in sorted(snapshots.items()):
        for entry in payload:
            family = families.get(entry["name"])
            if family is None:
                family = families[entry["name"]] = Metric(entry["name"], entry["help"], entry["type"])
            elif family.type != entry["type"]:
                continue  # a process on another version disagrees; keep the first meaning
            for name, labels, value in entry["samples"]:
                family.add_sample(name, {**labels, "process": process}, value)
    yield from families.values()


class SharedCollector:
    """What /metrics shows: this process's live values plus every other process's last push."""

    def __init__(self, redis_client: redis.Redis, registry: CollectorRegistry = REGISTRY) -> None:
        self.redis_client, self.registry = redis_client, registry

    def collect(self) -> Iterable[Metric]:
        own = process_name()
        try:
            snapshots = pushed_snapshots(self.redis_client)
        except redis.RedisError:
            log.warning("metrics snapshots unreadable: Redis unavailable; showing this process only")
            snapshots = {}
        snapshots[own] = snapshot(self.registry)  # fresher than what this process pushed
        return merged(snapshots)


# ---- the pusher -----------------------------------------------------------------------------------
class Pusher:
    """Pushes this process's snapshot every PUSH_SECONDS until stopped; stopping removes it at once."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.process = process_name()
        self._stopped = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="metrics-pusher", daemon=True)

    def start(self) -> Pusher:
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def push_once(self) -> None:
        try:
            push(client(), self.process, snapshot(self.registry))
            self._failing = False
        except Exception:
            # One warning per outage, not one every few seconds.
            log.log(logging.DEBUG if self._failing else logging.WARNING, "metrics push to Redis failed",
                    exc_info=not self._failing)
            self._failing = True

    def _run(self) -> None:
        self.push_once()
        while not self._stopped.wait(PUSH_SECONDS):
            self.push_once()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)  # so a push in flight does not bring the snapshot back
        try:
            forget(client(), self.process)
        except Exception:
            pass  # it expires by itself


_pusher: Pusher | None = None
_pusher_pid = 0
_pusher_lock = threading.Lock()


def ensure_pushing() -> None:
    """Start this process's pusher unless it runs (cheap when it does; also after a fork)."""
    global _pusher, _pusher_pid
    if _pusher is not None and _pusher_pid == os.getpid():
        return
    with _pusher_lock:
        if _pusher is None or _pusher_pid != os.getpid():
            _pusher, _pusher_pid = Pusher().start(), os.getpid()


def stop_pushing() -> None:
    """A clean shutdown: push no more and remove this process's snapshot."""
    global _pusher
    with _pusher_lock:
        pusher, _pusher = _pusher, None
    if pusher is not None:
        pusher.stop()
