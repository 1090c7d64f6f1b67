"""Sign-up flood limit: accounts created per client address per hour, counted in Redis."""
from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.http import HttpRequest

from chat.core import rate_windows, request_meta

log = logging.getLogger(__name__)
WINDOW_SECONDS = 3600
KEY_PREFIX = "deepseek:signups:"


def _key(request: HttpRequest) -> str:
    # The audit log's address: behind trusted proxies, the client's, not the proxy's.
    return f"{KEY_PREFIX}{request_meta.client_ip(request.META) or 'unknown'}"


def take_signup(request: HttpRequest) -> int | None:
    """Count one sign-up for the request's address; None when it is allowed, else the seconds until
    the address may sign up again. Every web process shares the count (Redis). A refused attempt counts
    too, so a flood stays refused until the hour ends."""
    limit = settings.SIGNUPS_PER_IP_PER_HOUR
    if limit <= 0:
        return None
    try:
        return rate_windows.hit(_key(request), limit, WINDOW_SECONDS)
    except redis.RedisError as exc:
        # Without Redis the site cannot chat anyway; refusing sign-ups too would help nobody.
        log.warning("sign-up limit not checked (Redis unavailable): %s", exc)
        return None
