"""Sticky routing: a conversation's answers go to the live worker that holds its KV cache."""
import time
import uuid

import pytest

from inference.routing import LIVE_FOR_SECONDS, Heartbeat, live_workers, private_queue, queue_for

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
