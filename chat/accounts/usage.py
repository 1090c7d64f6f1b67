"""The /v1 API's per-user limits (requests per minute, requests in flight, tokens per day) and its usage.

Requests per minute and requests in flight are counted in Redis (shared by every web process);
tokens are counted in the database (ApiUsage, one row per user per UTC day), added by the worker
when an answer ends, so the quota survives restarts and the usage page reads the same numbers.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils.translation import gettext as _

from chat.accounts.models import ApiUsage
from chat.core import rate_windows
from chat.core.redis_server import client as _client

log = logging.getLogger(__name__)
SLOT_TTL_SECONDS = 900  # a slot a crashed web process never released frees itself after this
RATE_WINDOW_SECONDS = 60  # "per minute" (a module constant so tests can shorten the wait)


@dataclass(frozen=True)
class Limits:
    """0 means no limit."""

    requests_per_minute: int
    concurrent_requests: int
    tokens_per_day: int


def current_limits() -> Limits:
    return Limits(settings.API_REQUESTS_PER_MINUTE, settings.API_CONCURRENT_REQUESTS, settings.API_TOKENS_PER_DAY)


class LimitExceeded(Exception):
    """A request refused by a limit: `status` 429 (slow down) or 402 (today's tokens are spent)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def seconds_to_midnight(now: dt.datetime | None = None) -> int:
    now = now or dt.datetime.now(dt.UTC)
    tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return max(1, math.ceil((tomorrow - now).total_seconds()))


def usage_today(user_id: int) -> ApiUsage:
    """Today's row (unsaved and empty when the user made no request today)."""
    return ApiUsage.objects.filter(user_id=user_id, day=_today()).first() or ApiUsage(user_id=user_id, day=_today())


def _add(user_id: int, requests: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
    day = _today()
    changes = {"requests": F("requests") + requests, "prompt_tokens": F("prompt_tokens") + prompt_tokens,
               "completion_tokens": F("completion_tokens") + completion_tokens}
    if ApiUsage.objects.filter(user_id=user_id, day=day).update(**changes):
        return
    try:
        with transaction.atomic():
            ApiUsage.objects.create(user_id=user_id, day=day, requests=requests, prompt_tokens=prompt_tokens,
                                    completion_tokens=completion_tokens)
    except IntegrityError:  # another request made today's row first
        ApiUsage.objects.filter(user_id=user_id, day=day).update(**changes)


def record_tokens(user_id: int, prompt_tokens: int, completion_tokens: int) -> None:
    """Called by the worker when an API answer ends (however it ends: tokens were spent)."""
    try:
        _add(user_id, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    except Exception:  # never lose the answer over its bookkeeping
        log.exception("could not record the API usage of user %s", user_id)


def _slots_key(user_id: int) -> str:
    return f"deepseek:api:inflight:{user_id}"


def in_flight(user_id: int) -> int:
    try:
        client = _client()
        client.zremrangebyscore(_slots_key(user_id), "-inf", time.time())
        return int(client.zcard(_slots_key(user_id)))
    except redis.RedisError:
        return 0


@dataclass
class Slot:
    """A request in flight; release it when the response ends (streamed or not)."""

    user_id: int
    member: str

    def release(self) -> None:
        try:
            _client().zrem(_slots_key(self.user_id), self.member)
        except redis.RedisError:  # it expires by itself
            log.warning("could not release an API slot of user %s", self.user_id)


def admit(user_id: int, limits: Limits | None = None) -> Slot:
    """Let one request in, or raise LimitExceeded. Checked in this order: today's tokens (402),
    requests this minute (429), requests in flight (429). An admitted request is counted."""
    limits = limits or current_limits()
    if limits.tokens_per_day and usage_today(user_id).total_tokens >= limits.tokens_per_day:
        raise LimitExceeded(402, "insufficient_quota",
                            _("You have used your %(limit)d tokens for today; the quota renews at 00:00 UTC.")
                            % {"limit": limits.tokens_per_day}, seconds_to_midnight())
    slot = Slot(user_id, uuid.uuid4().hex)
    try:
        client = _client()
        now = time.time()
        if limits.requests_per_minute:
            wait = rate_windows.hit(f"deepseek:api:rpm:{user_id}:{RATE_WINDOW_SECONDS}", limits.requests_per_minute,
                                    RATE_WINDOW_SECONDS, client, now)
            if wait is not None:
                raise LimitExceeded(429, "rate_limit_exceeded",
                                    _("More than %(limit)d requests in a minute; wait and retry.")
                                    % {"limit": limits.requests_per_minute}, wait)
        if limits.concurrent_requests:
            key = _slots_key(user_id)
            pipe = client.pipeline()
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {slot.member: now + SLOT_TTL_SECONDS})
            pipe.zcard(key)
            pipe.expire(key, SLOT_TTL_SECONDS)
            count = pipe.execute()[2]
            if count > limits.concurrent_requests:
                slot.release()
                raise LimitExceeded(429, "too_many_concurrent_requests",
                                    _("%(limit)d requests are already running for you; wait for one to finish.")
                                    % {"limit": limits.concurrent_requests}, 1)
    except redis.RedisError:  # the broker is down too; the request fails later with a clear 503
        log.warning("API limits unchecked: Redis is unreachable")
    _add(user_id, requests=1)
    return slot
