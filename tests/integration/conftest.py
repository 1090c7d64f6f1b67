"""Fixtures of the integration tier: a real Celery worker in this process (tests/support/worker.py)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytest
from celery.worker import WorkController

from tests.support.worker import started_worker


@pytest.fixture(scope="session")
def running_worker(django_db_blocker):
    """Start a worker: `with running_worker(queues, concurrency=2, announce=True, **options) as worker:`.

    A factory, so a fixture of any scope (and a test that starts its worker halfway) can use it; the
    worker's threads may use the test database while it runs. Options: tests/support/worker.py.
    """

    @contextmanager
    def start(queues: Iterable[str], **options) -> Iterator[WorkController]:
        with django_db_blocker.unblock(), started_worker(queues, **options) as worker:
            yield worker

    return start
