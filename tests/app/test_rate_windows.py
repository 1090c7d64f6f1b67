"""The one fixed-window rate counter (chat.core.rate_windows) behind sign-ups, chat messages and API requests."""
from __future__ import annotations

import uuid

import pytest
import redis

from chat.core import rate_windows
from chat.core.redis_server import shared_client


@pytest.fixture
def key(redis_url):
    name = f"deepseek:test:rate:{uuid.uuid4().hex}"
    yield name
    client = shared_client(redis_url)
    for counter in client.scan_iter(f"{name}:*"):
        client.delete(counter)


def test_hits_within_the_limit_pass_and_the_next_waits_for_the_next_window(key, redis_url):
    now = 6000.25  # a quarter second into window 100 of 60 s
    assert rate_windows.hit(key, 2, 60, now=now) is None
    assert rate_windows.hit(key, 2, 60, now=now) is None
    assert rate_windows.hit(key, 2, 60, now=now + 59.5) == 1  # at least 1
    assert rate_windows.hit(key, 2, 60, now=now) == 60  # 59.75 s left, rounded up
    counter = shared_client(redis_url)
    assert int(counter.get(f"{key}:100")) == 4  # refused hits count too
    assert 60 < counter.ttl(f"{key}:100") <= 120
    assert rate_windows.hit(key, 2, 60, now=6060.0) is None  # a new window, a new count


def test_each_key_counts_on_its_own(key):
    assert rate_windows.hit(key + ":a", 1, 60, now=60.0) is None
    assert rate_windows.hit(key + ":b", 1, 60, now=60.0) is None
    assert rate_windows.hit(key + ":a", 1, 60, now=60.0) == 60


def test_without_redis_it_raises_for_the_caller_to_decide(key):
    with pytest.raises(redis.RedisError):
        rate_windows.hit(key, 1, 60, client=shared_client("redis://127.0.0.1:1/0"))
