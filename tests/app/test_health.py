"""/readyz: the database, Redis and a live worker per configured model; 503 with the failing checks
(never a 500 or an HTML page), cached for a few seconds so a burst of probes checks once."""
from __future__ import annotations

import threading
import time

import pytest
from django.db import OperationalError, connections

from chat.core.redis_server import free_port
from chat.core.served_models import all_models
from chat.core.worker_routing import Heartbeat
from deepseek_web import health

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch, broker):
    """Every test starts with no cached result and no announced worker (the broker fixture)."""
    monkeypatch.setattr(health, "_cached", None)
    monkeypatch.setattr(health, "_was_ready", None)


@pytest.fixture
def workers():
    """A worker announcing itself on every configured model's queue, as a real one does every 5 s."""
    beat = Heartbeat("readyz-test@host", [spec.celery_queue for spec in all_models().values()]).start()
    yield beat
    beat.stop()


def probe(client):
    response = client.get("/readyz")
    assert response["Content-Type"] == "application/json"
    return response, response.json()


def test_it_is_ready_with_the_database_redis_and_a_worker_for_every_model(client, workers):
    response, body = probe(client)
    assert response.status_code == 200 and "Retry-After" not in response
    assert body == {"status": "ready", "checks": {
        "database": {"ok": True}, "redis": {"ok": True},
        "workers:deepseek-chat": {"ok": True}, "workers:deepseek-vl": {"ok": True},
    }}


def test_it_is_not_ready_when_a_configured_model_has_no_worker(client):
    beat = Heartbeat("half@host", [all_models()["deepseek-chat"].celery_queue]).start()
    try:
        response, body = probe(client)
    finally:
        beat.stop()
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert body["status"] == "not ready"
    assert body["checks"]["workers:deepseek-chat"] == {"ok": True}
    assert body["checks"]["workers:deepseek-vl"] == {"ok": False, "reason": "no live worker"}


def test_it_answers_503_not_500_when_redis_is_unreachable(client, settings, workers):
    settings.REDIS_URL = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    started = time.monotonic()
    response, body = probe(client)
    assert time.monotonic() - started < health.TIMEOUT_SECONDS + 1
    assert response.status_code == 503 and response["Retry-After"]
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["redis"]["ok"] is False and body["checks"]["workers:deepseek-chat"]["ok"] is False
    # Public: names and short reasons only, never the URL, host, port or password.
    text = response.content.decode()
    assert "hunter2" not in text and "127.0.0.1" not in text and settings.REDIS_URL.rsplit(":", 1)[1] not in text


def test_it_answers_503_when_the_database_refuses_connections(client, monkeypatch, workers):
    def refuse(self, params):
        raise OperationalError("unable to open database file /secret/path.sqlite3")

    # The check runs on a thread of its own, which opens a new connection: the driver refuses it.
    monkeypatch.setattr(type(connections["default"]), "get_new_connection", refuse)
    response, body = probe(client)
    assert response.status_code == 503
    assert body["checks"]["database"] == {"ok": False, "reason": "unavailable (OperationalError)"}
    assert body["checks"]["redis"] == {"ok": True}
    assert "/secret/path" not in response.content.decode()


def test_a_database_that_hangs_costs_the_probe_its_timeout_not_longer(client, monkeypatch, workers):
    release = threading.Event()

    def hang(self, params):
        release.wait(10)
        raise OperationalError("gave up")

    monkeypatch.setattr(type(connections["default"]), "get_new_connection", hang)
    monkeypatch.setattr(health, "TIMEOUT_SECONDS", 0.5)
    started = time.monotonic()
    try:
        response, body = probe(client)
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert response.status_code == 503 and body["checks"]["database"] == {"ok": False, "reason": "timeout"}


def test_probes_within_the_cache_time_run_the_checks_once(client, monkeypatch, workers):
    calls = []
    database = health._database
    monkeypatch.setattr(health, "_database", lambda: calls.append(1) or database())
    for _ in range(5):
        assert client.get("/readyz").status_code == 200
    # A burst arriving together waits for the one run rather than starting its own.
    monkeypatch.setattr(health, "_cached", None)
    threads = [threading.Thread(target=health.readiness) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 2
    # Once the result is older than the cache time, the next probe checks again.
    at, checks = health._cached
    monkeypatch.setattr(health, "_cached", (at - health.CACHE_SECONDS, checks))
    client.get("/readyz")
    assert len(calls) == 3


def test_it_is_public_and_answers_get_only(client, workers):
    assert client.get("/readyz").status_code == 200  # no session, no token
    assert client.post("/readyz").status_code == 405


def test_not_ready_is_logged_once_when_it_changes_not_as_an_error_per_probe(client, caplog):
    with caplog.at_level("INFO"):
        for _ in range(3):
            health._cached = None  # each probe checks again
            assert client.get("/readyz").status_code == 503
    mine = [r for r in caplog.records if r.name == "deepseek_web.health"]
    assert [r.levelname for r in mine] == ["WARNING"] and "workers:deepseek-chat no live worker" in mine[0].message
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
