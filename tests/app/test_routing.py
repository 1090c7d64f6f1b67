"""Sticky routing: a conversation's answers go to the live worker that holds its KV cache."""
import time
import uuid

import pytest

from chat.core.worker_routing import (
    LIVE_FOR_SECONDS,
    Heartbeat,
    live_workers,
    private_queue,
    queue_for,
    requeue_from_silent_workers,
)

QUEUE = "model.routing-test"


@pytest.fixture
def workers(broker):
    broker.delete(f"deepseek:workers:{QUEUE}")

    def announce(name: str, age: float = 0.0) -> None:
        broker.zadd(f"deepseek:workers:{QUEUE}", {name: time.time() - age})

    yield announce
    broker.delete(f"deepseek:workers:{QUEUE}")


def test_with_no_live_worker_it_uses_the_shared_queue(workers):
    workers("old", age=LIVE_FOR_SECONDS + 5)
    assert live_workers(QUEUE) == []
    assert queue_for(QUEUE, uuid.uuid4()) == QUEUE


def test_a_conversation_always_goes_to_the_same_live_worker(workers):
    workers("a@host")
    workers("b@host")
    conversations = [uuid.uuid4() for _ in range(60)]
    first = {c: queue_for(QUEUE, c) for c in conversations}
    assert all(queue_for(QUEUE, c) == first[c] for c in conversations)
    assert set(first.values()) == {private_queue(QUEUE, "a@host"), private_queue(QUEUE, "b@host")}


def test_a_new_worker_takes_over_only_its_own_share(workers):
    workers("a@host")
    workers("b@host")
    conversations = [uuid.uuid4() for _ in range(60)]
    before = {c: queue_for(QUEUE, c) for c in conversations}
    workers("c@host")
    after = {c: queue_for(QUEUE, c) for c in conversations}
    moved = [c for c in conversations if before[c] != after[c]]
    assert moved and all(after[c] == private_queue(QUEUE, "c@host") for c in moved)
    assert len(moved) < len(conversations)


def test_a_heartbeat_announces_and_a_clean_stop_leaves_at_once(workers):
    beat = Heartbeat("w1@host", [QUEUE]).start()
    assert live_workers(QUEUE) == ["w1@host"]
    beat.stop()
    assert live_workers(QUEUE) == []


def test_a_silent_workers_queued_tasks_move_to_the_shared_queue(workers, broker):
    workers("dead@host", age=LIVE_FOR_SECONDS + 1)
    workers("alive@host")
    broker.delete(QUEUE, private_queue(QUEUE, "dead@host"))
    broker.lpush(private_queue(QUEUE, "dead@host"), b"task-1", b"task-2")
    assert requeue_from_silent_workers(broker, QUEUE) == 2
    assert broker.llen(private_queue(QUEUE, "dead@host")) == 0
    assert sorted(broker.lrange(QUEUE, 0, -1)) == [b"task-1", b"task-2"]
    assert live_workers(QUEUE) == ["alive@host"] and broker.zscore(f"deepseek:workers:{QUEUE}", "dead@host") is None
    broker.delete(QUEUE)

