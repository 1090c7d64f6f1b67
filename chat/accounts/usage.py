"""Per-user limits and usage: the /v1 API's (requests per minute, requests in flight, tokens per day) and
the chat's tokens per day.

Requests per minute and requests in flight are counted in Redis (shared by every web process).
Tokens are counted in the database (ApiUsage / ChatUsage, one row per user per UTC day), so the quota
survives restarts and the usage page reads the same numbers. An answer reserves the most it may spend
(its prompt estimate and its max_tokens) in the transaction that saves it, with one conditional UPDATE
that cannot pass two requests which together do not fit; the worker settles it when the answer ends
(the hold is replaced by the tokens actually spent). The database, not Redis, holds the reservations:
the check, the hold and the answer row commit together or not at all, and a hold never outlives its day.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils.translation import gettext as _

from chat.accounts.models import ApiUsage, ChatUsage, DailyTokens, TokenReservation
from chat.core import rate_windows
from chat.core.errors import ChatError
from chat.core.redis_server import client as _client

log = logging.getLogger(__name__)
SLOT_TTL_SECONDS = 900  # a slot a crashed web process never released frees itself after this
SLOT_REFRESH_SECONDS = 60  # a running request moves its slot's expiry on this often (Slot.refresh)
RATE_WINDOW_SECONDS = 60  # "per minute" (a module constant so tests can shorten the wait)


@dataclass(frozen=True)
class Limits:
    """0 means no limit."""

    requests_per_minute: int
    concurrent_requests: int
    tokens_per_day: int


def current_limits() -> Limits:
    return Limits(settings.API_REQUESTS_PER_MINUTE, settings.API_CONCURRENT_REQUESTS, settings.API_TOKENS_PER_DAY)


class LimitExceeded(ChatError):
    """A request refused by a limit: `status` 429 (slow down) or 402 (today's tokens are spent). A ChatError,
    so the socket sends it as an error frame; the API answers it with `status` and Retry-After."""

    def __init__(self, status: int, code: str, message: str, retry_after: int) -> None:
        super().__init__(code, message)
        self.status, self.retry_after = status, retry_after


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def seconds_to_midnight(now: dt.datetime | None = None) -> int:
    now = now or dt.datetime.now(dt.UTC)
    tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return max(1, math.ceil((tomorrow - now).total_seconds()))


def usage_today(user_id: int) -> ApiUsage:
    """Today's row (unsaved and empty when the user made no request today)."""
    return ApiUsage.objects.filter(user_id=user_id, day=_today()).first() or ApiUsage(user_id=user_id, day=_today())


def _add(user_id: int, model: type[DailyTokens] = ApiUsage, **counts: int) -> None:
    """Add `counts` (field: amount) to the user's row of today, made if missing."""
    day = _today()
    changes = {name: F(name) + amount for name, amount in counts.items()}
    if model.objects.filter(user_id=user_id, day=day).update(**changes):
        return
    try:
        with transaction.atomic():
            model.objects.create(user_id=user_id, day=day, **counts)
    except IntegrityError:  # another request made today's row first
        model.objects.filter(user_id=user_id, day=day).update(**changes)


# ---- daily token quotas: reserve up front, settle at the end -------------------------------------------
Meter = TokenReservation.Meter
_USAGE: dict[str, type[DailyTokens]] = {Meter.API: ApiUsage, Meter.CHAT: ChatUsage}
QUOTA_BUSY_RETRY_SECONDS = 5  # a hold is given back when its answer ends: seconds, as a rule


def tokens_per_day(meter: str) -> int:
    return settings.API_TOKENS_PER_DAY if meter == Meter.API else settings.CHAT_TOKENS_PER_DAY


def _quota_spent(limit: int) -> LimitExceeded:
    return LimitExceeded(402, "insufficient_quota",
                         _("You have used your %(limit)d tokens for today; the quota renews at 00:00 UTC.")
                         % {"limit": limit}, seconds_to_midnight())


def reserve(meter: str, user_id: int, ref: uuid.UUID, tokens: int) -> None:
    """Hold `tokens` of the user's quota for today for the answer `ref`, or raise LimitExceeded: 402 when
    they do not fit even with nothing else being written, 429 when answers still being written hold the
    rest (they give back what they do not spend). Call it inside the transaction that saves the answer,
    so a refusal leaves nothing behind and a hold exists exactly when its answer does. No-op without a
    quota (the tokens spent are still recorded at the end)."""
    limit = tokens_per_day(meter)
    if not limit:
        return
    model, day, tokens = _USAGE[meter], _today(), max(1, tokens)
    if not model.objects.filter(user_id=user_id, day=day).exists():
        _add(user_id, model, prompt_tokens=0)  # today's row exists: the one UPDATE below checks and holds
    # One statement: concurrent ones are serialised by the row's lock, and each sees the others' holds.
    held = model.objects.filter(
        user_id=user_id, day=day,
        prompt_tokens__lte=Value(limit - tokens) - F("completion_tokens") - F("reserved_tokens"),
    ).update(reserved_tokens=F("reserved_tokens") + tokens)
    if not held:
        row = model.objects.get(user_id=user_id, day=day)
        left = max(0, limit - row.total_tokens)
        if left == 0:
            raise _quota_spent(limit)
        if tokens > left:
            raise LimitExceeded(402, "insufficient_quota",
                                _("This answer may take up to %(tokens)d tokens, but %(left)d of your %(limit)d "
                                  "tokens for today are left. Ask for a shorter answer (max_tokens) or wait for "
                                  "00:00 UTC.") % {"tokens": tokens, "left": left, "limit": limit},
                                seconds_to_midnight())
        raise LimitExceeded(429, "quota_held",
                            _("Answers still being written hold the rest of your tokens for today; wait for one "
                              "to finish."), QUOTA_BUSY_RETRY_SECONDS)
    TokenReservation.objects.create(ref=ref, user_id=user_id, meter=meter, day=day, tokens=tokens)


def held_refs(user_id: int) -> list[uuid.UUID]:
    """The answers the user holds tokens for (few: at most the answers being written)."""
    return list(TokenReservation.objects.filter(user_id=user_id).values_list("ref", flat=True))


def release(refs: list[uuid.UUID] | list[str]) -> None:
    """Give back the holds of `refs` (those not settled yet; each is given back once)."""
    for hold in TokenReservation.objects.filter(ref__in=refs):
        with transaction.atomic():
            if TokenReservation.objects.filter(ref=hold.ref).delete()[0]:
                _USAGE[hold.meter].objects.filter(user_id=hold.user_id, day=hold.day).update(
                    reserved_tokens=Greatest(F("reserved_tokens") - hold.tokens, Value(0)))


def settle(source: str, user_id: int, answer_id: uuid.UUID | str, prompt_tokens: int, completion_tokens: int) -> None:
    """Called by the worker when an answer ends, however it ends (tokens were spent): its hold is given
    back and the tokens it spent are added to today's usage of its meter ("api" answers to the API's)."""
    meter = Meter.API if source == Meter.API else Meter.CHAT
    try:
        with transaction.atomic():
            release([answer_id])
            _add(user_id, _USAGE[meter], prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    except Exception:  # never lose the answer over its bookkeeping
        log.exception("could not record the %s usage of user %s", meter, user_id)


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
    refreshed: float = field(default_factory=time.monotonic)  # when its expiry was last moved

    def release(self) -> None:
        try:
            _client().zrem(_slots_key(self.user_id), self.member)
        except redis.RedisError:  # it expires by itself
            log.warning("could not release an API slot of user %s", self.user_id)

    def refresh_due(self) -> bool:
        return time.monotonic() - self.refreshed >= SLOT_REFRESH_SECONDS

    def refresh(self) -> None:
        """Move the slot's expiry SLOT_TTL_SECONDS past now: a request still running (a long answer, a wait
        for a worker) keeps its slot, while one whose process died still frees itself."""
        self.refreshed = time.monotonic()
        try:
            pipe = _client().pipeline()
            # Added again if it had expired meanwhile: the request it counts is still running.
            pipe.zadd(_slots_key(self.user_id), {self.member: time.time() + SLOT_TTL_SECONDS})
            pipe.expire(_slots_key(self.user_id), SLOT_TTL_SECONDS)
            pipe.execute()
        except redis.RedisError:
            log.warning("could not refresh an API slot of user %s", self.user_id)


def admit(user_id: int, limits: Limits | None = None) -> Slot:
    """Let one request in, or raise LimitExceeded. Checked in this order: today's tokens (402),
    requests this minute (429), requests in flight (429). An admitted request is counted."""
    limits = limits or current_limits()
    # Spent already: refused before anything else. The answer's own hold is taken when it is saved (reserve).
    if limits.tokens_per_day and usage_today(user_id).total_tokens >= limits.tokens_per_day:
        raise _quota_spent(limits.tokens_per_day)
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
