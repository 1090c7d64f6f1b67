"""The probes: /healthz (the process answers) and /readyz (the database, Redis, and a live worker per model)."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import redis
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from chat.core.metrics_snapshots import client as redis_client
from chat.core.served_models import all_models
from chat.core.worker_routing import live_workers

log = logging.getLogger(__name__)
CACHE_SECONDS = 3.0  # a burst of probes (several load balancers, kubelets) runs the checks once
TIMEOUT_SECONDS = 2.0  # the whole set of checks; Redis commands give up after 1 s each
RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    reason: str = ""  # short and generic: never a URL, host or password

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, **({"reason": self.reason} if self.reason else {})}


# Checks run on threads of their own, so a database that hangs on connect costs a probe
# TIMEOUT_SECONDS, not a request thread for as long as the driver waits.
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")
_lock = threading.Lock()
_cached: tuple[float, list[Check]] | None = None
_was_ready: bool | None = None


def _database() -> list[Check]:
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return [Check("database", False, f"unavailable ({type(exc).__name__})")]
    finally:
        connection.close()  # a pool thread holds no connection between probes
    return [Check("database", True)]


def _redis_and_workers() -> list[Check]:
    models = list(all_models().values())
    client = redis_client()
    try:
        client.ping()
    except redis.RedisError as exc:
        return [Check("redis", False, f"unavailable ({type(exc).__name__})"),
                *(Check(f"workers:{spec.name}", False, "redis unavailable") for spec in models)]
    checks = [Check("redis", True)]
    for spec in models:
        try:
            live = live_workers(spec.celery_queue, client)
        except redis.RedisError as exc:
            checks.append(Check(f"workers:{spec.name}", False, f"unknown ({type(exc).__name__})"))
            continue
        checks.append(Check(f"workers:{spec.name}", bool(live), "" if live else "no live worker"))
    return checks


def _outcome(future: Future, names: list[str], deadline: float) -> list[Check]:
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        return [Check(name, False, "timeout") for name in names]
    except Exception as exc:  # a check must never turn the probe into a 500
        return [Check(name, False, f"error ({type(exc).__name__})") for name in names]


def run_checks() -> list[Check]:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    database, backing = _pool.submit(_database), _pool.submit(_redis_and_workers)
    names = ["redis", *(f"workers:{name}" for name in all_models())]
    return _outcome(database, ["database"], deadline) + _outcome(backing, names, deadline)


def readiness() -> list[Check]:
    """The checks' results, at most CACHE_SECONDS old; concurrent callers share one run."""
    global _cached
    with _lock:
        if _cached is not None and time.monotonic() - _cached[0] < CACHE_SECONDS:
            return _cached[1]
        checks = run_checks()
        _cached = (time.monotonic(), checks)
        _log_change(checks)
        return checks


def _log_change(checks: list[Check]) -> None:
    """One line when readiness changes, rather than one per probe."""
    global _was_ready
    ready = all(check.ok for check in checks)
    if ready != _was_ready:
        if ready:
            log.info("ready: every check passes")
        else:
            log.warning("not ready: %s", ", ".join(f"{c.name} {c.reason}" for c in checks if not c.ok))
    _was_ready = ready


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when every check passes, else 503 with Retry-After; public, so it names checks only."""
    checks = readiness()
    ready = all(check.ok for check in checks)
    response = JsonResponse({"status": "ready" if ready else "not ready",
                             "checks": {check.name: check.as_json() for check in checks}},
                            status=200 if ready else 503)
    response["Cache-Control"] = "no-store"
    if not ready:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        # An expected state, logged once when it changes (above): not a server error per probe.
        response._has_been_logged = True  # type: ignore[attr-defined]
    return response


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})
