"""Sign-up flood limit: accounts created per client address per hour, counted in Redis."""
from __future__ import annotations

import logging
import time

import redis
from django.conf import settings
from django.http import HttpRequest

from chat.audit import log as audit
from chat.core.redis_server import shared_client

log = logging.getLogger(__name__)
WINDOW_SECONDS = 3600
KEY_PREFIX = "deepseek:signups:"


def _key(request: HttpRequest, window: int) -> str:
    # The audit log's address: behind trusted proxies, the client's, not the proxy's.
    return f"{KEY_PREFIX}{audit.client_ip(request.META) or 'unknown'}:{window}"


def take_signup(request: HttpRequest) -> int | None:
    """Count one sign-up for the request's address; None when it is allowed, else the seconds until
    the address may sign up again. Every web process shares the count (Redis). A refused attempt counts
    too, so a flood stays refused until the hour ends."""
    limit = settings.SIGNUPS_PER_IP_PER_HOUR
    if limit <= 0:
        return None
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    key = _key(request, window)
    try:
        pipe = shared_client(settings.REDIS_URL).pipeline()
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS + 60)
        count = pipe.execute()[0]
    except redis.RedisError as exc:
        # Without Redis the site cannot chat anyway; refusing sign-ups too would help nobody.
        log.warning("sign-up limit not checked (Redis unavailable): %s", exc)
        return None
    if count <= limit:
        return None
    return max(1, int((window + 1) * WINDOW_SECONDS - now))
