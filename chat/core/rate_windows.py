"""Fixed-window rate counters in Redis, shared by every process (sign-ups, chat messages, API requests)."""
from __future__ import annotations

import math
import time

import redis

from chat.core import redis_server


def hit(key: str, limit: int, window_seconds: int, client: redis.Redis | None = None,
        now: float | None = None) -> int | None:
    """Count one hit in the current window of `key` (counted at "<key>:<window number>"): None while
    the window's count is within `limit`, else the seconds until the next window starts (at least 1).

    A refused hit counts too, so a flood stays refused until its window ends. Raises redis.RedisError
    when Redis cannot count: what that means is the caller's to decide."""
    now = time.time() if now is None else now
    window = int(now // window_seconds)
    counter = f"{key}:{window}"
    pipe = (client or redis_server.client()).pipeline()
    pipe.incr(counter)
    pipe.expire(counter, window_seconds + 60)  # it outlives its window; a minute's slack for clocks
    count = pipe.execute()[0]
    if count <= limit:
        return None
    return max(1, math.ceil((window + 1) * window_seconds - now))
