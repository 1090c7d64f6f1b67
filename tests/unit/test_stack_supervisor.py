"""`make run`'s supervisor (deepseek_web/stack.py): a worker that exits is started again with exponential
backoff, one line each time; and what /readyz still lacks, in words. (The real thing, with processes and a
Redis stopped and started: tests/system/test_self_healing.py.)"""
from __future__ import annotations

import os
import signal

import pytest

from deepseek_web.stack import Supervised, _missing


@pytest.fixture(autouse=True)
def reaped(monkeypatch) -> list[int]:
    """The process groups the supervisor ended (none really: the processes are fakes)."""
    groups: list[int] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: groups.append(pgid) if sig == signal.SIGKILL else None)
    return groups


class FakeProcess:
    count = 0

    def __init__(self) -> None:
        FakeProcess.count += 1
        self.pid = 100_000 + FakeProcess.count
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


def supervised() -> tuple[Supervised, list[FakeProcess], list[str]]:
    started: list[FakeProcess] = []
    said: list[str] = []

    def launch() -> FakeProcess:
        started.append(FakeProcess())
        return started[-1]

    return Supervised("Celery worker", launch, say=said.append, stable_seconds=60), started, said


def test_a_worker_that_keeps_exiting_waits_twice_as_long_each_time_up_to_30_s(reaped):
    worker, started, said = supervised()
    worker.start()
    worker.started_at = now = 0.0
    delays = []
    for _ in range(7):
        started[-1].returncode = 75
        worker.tend(now)
        delays.append(worker.restart_at - now)
        worker.tend(worker.restart_at - 0.01)  # not yet
        assert worker.process is None
        now = worker.restart_at
        worker.tend(now)
        assert worker.process is started[-1] and worker.process.poll() is None
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert len(started) == 8
    assert reaped == [p.pid for p in started[:-1]]  # what each left behind (its beat) ended with it
    assert said[0] == "the Celery worker exited with code 75; restarting it in 1 s (restart 1)"
    assert said[-1] == "the Celery worker exited with code 75; restarting it in 30 s (restart 7)"


def test_a_worker_that_stayed_up_a_while_restarts_after_the_first_delay_again_and_a_kill_is_named():
    worker, started, said = supervised()
    worker.start()
    worker.started_at = 0.0
    now = 0.0
    for _ in range(2):  # two quick exits: after 1 s, then 2 s
        now += 1
        started[-1].returncode = 1
        worker.tend(now)
        now = worker.restart_at
        worker.tend(now)
        worker.started_at = now
    assert said[-1].endswith("restarting it in 2 s (restart 2)")
    started[-1].returncode = -9
    worker.tend(now + 61)  # it was up a minute: back to the first delay
    assert said[-1] == "the Celery worker was killed by SIGKILL; restarting it in 1 s (restart 3)"


def test_readiness_progress_names_what_is_missing():
    checks = {"database": {"ok": True}, "redis": {"ok": False}, "workers:deepseek-chat": {"ok": False},
              "workers:deepseek-vl": {"ok": False}}
    assert _missing(checks) == ["Redis", "a live worker for deepseek-chat, deepseek-vl"]
    assert _missing({"database": {"ok": True}, "workers:deepseek-chat": {"ok": True}}) == []
