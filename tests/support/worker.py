"""A real Celery worker in this process, for the tests that need one: one copy of the start-up logic.

pytest tests take the `running_worker` fixture (tests/integration/conftest.py), which also lets the
worker's threads use the test database; unittest-style classes (tests/support/browser.py,
tests/support/api_server.py) enter `started_worker` in setUpClass and leave it in tearDownClass.

The worker runs tasks on threads in this process, so a test can hand it an engine of its own
(`chat.worker.tasks._engines`) and read what it wrote without another process in the way.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from celery.contrib.testing.worker import start_worker
from celery.signals import worker_ready
from celery.worker import WorkController

from chat.worker.tasks import stop_engines
from deepseek_web.celery import app as celery_app

# Long enough for an answer still being written at the end of a test to stop (its engine is stopped
# first, below); a worker that takes longer fails the test at teardown, as start_worker reports it.
SHUTDOWN_TIMEOUT_SECONDS = 30


@contextmanager
def started_worker(queues: Iterable[str], *, concurrency: int = 2, announce: bool = True,
                   shutdown_timeout: float = SHUTDOWN_TIMEOUT_SECONDS, **options) -> Iterator[WorkController]:
    """A threads-pool worker consuming `queues` until the block ends.

    announce: send worker_ready as the command-line worker does when it starts consuming (the
    embedded worker does not): it loads the queues' models, takes a private queue per model and
    starts the heartbeat that announces it (the API checks for one before queueing; conversations
    stick to it). Without it, the worker takes only what is put on the shared `queues`.

    At the end, the engines and heartbeats are stopped (an in-process worker sends no
    worker_shutdown), then the worker; `options` go to Celery's start_worker.
    """
    with start_worker(celery_app, pool="threads", concurrency=concurrency, queues=list(queues),
                      perform_ping_check=False, loglevel="WARNING", shutdown_timeout=shutdown_timeout,
                      **options) as worker:
        try:
            if announce:
                worker_ready.send(sender=worker.consumer)
            yield worker
        finally:
            stop_engines()

