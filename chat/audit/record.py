"""Writing audit events: record() appends one to the chain and never raises; record_log_entries() for the admin."""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from chat.audit.chain import chain_head, event_hash, lock_chain, next_event_id
from chat.audit.models import AuditEvent
from chat.core import rate_windows
from chat.core.metrics import audit_write_failed
from chat.core.request_meta import client_ip, meta, request_id

__all__ = ["arecord", "failures", "record", "record_log_entries", "text_sha256"]

log = logging.getLogger(__name__)

ACTIONS = frozenset(AuditEvent.Action.values)
INT_MAX = 2**31 - 1

_failures = 0
_failures_lock = threading.Lock()


def failures() -> int:
    """Audit events this process failed to write since it started (for metrics and alerts)."""
    return _failures


_in_failure_run = False  # the last write failed: later failures are logged without their traceback


def _count_failure() -> None:
    global _failures
    with _failures_lock:
        _failures += 1
    audit_write_failed()  # the same count, for /metrics


def _log_failure(action: str, exc: BaseException) -> None:
    """Every failure is logged at ERROR; the traceback only with the first of a run of them (a database
    outage fails every request's event the same way, and a traceback each would bury the log)."""
    global _in_failure_run
    first, _in_failure_run = not _in_failure_run, True
    if first:
        log.error("Audit event %r could not be written (%d failures so far)", action, _failures, exc_info=exc)
    else:
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        log.error("Audit event %r could not be written (%d failures so far): %s: %s", action, _failures,
                  type(exc).__name__, reason)


# ---- what an event holds ----------------------------------------------------------------------
def text_sha256(text: str | None) -> str:
    """The digest stored in place of a prompt or an answer; "" when there is no text."""
    if text is None:
        return ""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _text(value: Any, limit: int) -> str:
    """A string either database stores: no NUL, no lone surrogate, at most `limit` characters."""
    text = str(value or "").replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8")[:limit]


def _count(value: Any, limit: int = INT_MAX) -> int | None:
    if value is None:
        return None
    return max(0, min(int(value), limit))


def _json_default(value: Any) -> Any:
    try:
        return DjangoJSONEncoder().default(value)
    except TypeError:
        return str(value)


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value, len(value))
    if isinstance(value, dict):
        return {_text(key, len(str(key))): _clean_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean_json(item) for item in value]
    return value


def _detail(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """The detail as it reads back from a JSON column (so the hash taken now matches it later)."""
    if not detail:
        return {}
    # Infinity and NaN are not JSON: jsonb would refuse them, so they are spelled as strings.
    plain = json.loads(json.dumps(detail, default=_json_default),
                       parse_constant=lambda name: name)
    return _clean_json(plain)


def _uuid(value: Any, what: str) -> uuid.UUID | None:
    if value is None or value == "":
        return None
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        # Kept without it: the event matters more than one bad id.
        log.warning("Audit %s %r is not a UUID; recorded as empty", what, value)
        return None


def _actor_of(actor: Any, request: Any) -> Any:
    if actor is None and request is not None:
        actor = request.get("user") if isinstance(request, Mapping) else getattr(request, "user", None)
    if actor is None or not getattr(actor, "is_authenticated", False):
        return None
    return actor


# ---- a flood of anonymous events ----------------------------------------------------------------
ANONYMOUS_WINDOW_SECONDS = 60


def _anonymous_allowance(event: AuditEvent) -> str:
    """"record", "mark" (the first event past the limit: one audit_suppressed row in its place) or
    "skip", for an event with no signed-in actor from a client's address (a rejected key, a failed
    login, an anonymous page hit). Each costs a database write under the chain's lock, so a client
    without an account gets AUDIT_ANONYMOUS_EVENTS_PER_MINUTE of them per address; an account's own
    events are never limited. When Redis cannot count, the event is recorded."""
    limit = int(getattr(settings, "AUDIT_ANONYMOUS_EVENTS_PER_MINUTE", 0) or 0)
    if limit <= 0 or event.actor_id is not None or not event.ip:
        return "record"
    key = f"deepseek:audit:anonymous:{event.ip}"
    try:
        if rate_windows.hit(key, limit, ANONYMOUS_WINDOW_SECONDS) is None:
            return "record"
        first_past = rate_windows.hit(f"{key}:mark", 1, ANONYMOUS_WINDOW_SECONDS) is None
    except redis.RedisError:
        return "record"
    return "mark" if first_past else "skip"


def _suppressed_mark(event: AuditEvent, limit: int) -> AuditEvent:
    event.detail = {"action": event.action, "limit": limit, "window_seconds": ANONYMOUS_WINDOW_SECONDS}
    event.action = AuditEvent.Action.AUDIT_SUPPRESSED
    event.input_sha256 = event.output_sha256 = event.verdict = ""
    event.status = event.latency_ms = None
    return event


# ---- writing ------------------------------------------------------------------------------------
def _build(action: str, *, actor: Any, request: Any, conversation_id: Any, message_id: Any, model: str,
           input_text: str | None, output_text: str | None, prompt_tokens: int | None,
           completion_tokens: int | None, latency_ms: int | None, status: int | None, verdict: str,
           detail: Mapping[str, Any] | None) -> AuditEvent:
    if action not in ACTIONS:
        # Kept anyway: an event with a new name is better than a lost one.
        log.warning("Audit action %r is not one of AuditEvent.Action", action)
    headers = meta(request) if request is not None else {}
    actor = _actor_of(actor, request)
    return AuditEvent(
        actor_id=actor.pk if actor is not None else None,
        actor_name=_text(actor.get_username(), 150) if actor is not None else "",
        action=_text(action, 64),
        ip=client_ip(headers),
        user_agent=_text(headers.get("HTTP_USER_AGENT", ""), 256),
        request_id=request_id(request) if request is not None else "",
        conversation_id=_uuid(conversation_id, "conversation_id"),
        message_id=_uuid(message_id, "message_id"),
        model=_text(model, 100),
        input_sha256=text_sha256(input_text),
        output_sha256=text_sha256(output_text),
        prompt_tokens=_count(prompt_tokens),
        completion_tokens=_count(completion_tokens),
        latency_ms=_count(latency_ms),
        status=_count(status, 32767),
        verdict=_text(verdict, 32),
        detail=_detail(detail),
    )


def record(action: str, *, actor: Any = None, request: Any = None, conversation_id: Any = None,
           message_id: Any = None, model: str = "", input_text: str | None = None,
           output_text: str | None = None, prompt_tokens: int | None = None, completion_tokens: int | None = None,
           latency_ms: int | None = None, status: int | None = None, verdict: str = "",
           detail: Mapping[str, Any] | None = None) -> AuditEvent | None:
    """Append an event to the audit chain and return it; never raises.

    The texts are stored as SHA-256 digests only. `actor` defaults to the request's logged-in user;
    `request` is an HttpRequest or a Channels scope (ip, user agent and request id come from it).

    On any failure (database down, lock timeout…) the error is logged at ERROR, `failures()` goes up
    and None is returned: auditing never breaks the caller. The insert runs in a savepoint, so a failed
    one leaves the caller's transaction usable; but an event written inside a transaction that later
    rolls back is rolled back with it: to keep the trace of a failed request, call this after (outside)
    the transaction that may fail. Inside a transaction, PostgreSQL holds the chain's lock until that
    transaction ends, so keep such transactions short. Synchronous (it queries the database): from
    async code use `arecord`.

    Events without a signed-in actor are limited per client address (AUDIT_ANONYMOUS_EVENTS_PER_MINUTE):
    past it, one audit_suppressed event says so, and the rest of that minute's return None unwritten."""
    try:
        event = _build(action, actor=actor, request=request, conversation_id=conversation_id,
                       message_id=message_id, model=model, input_text=input_text, output_text=output_text,
                       prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, latency_ms=latency_ms,
                       status=status, verdict=verdict, detail=detail)
        allowance = _anonymous_allowance(event)
        if allowance == "skip":
            return None
        if allowance == "mark":
            log.warning("Audit events without an account from %s passed %d a minute; the rest of this minute's "
                        "are not recorded", event.ip, settings.AUDIT_ANONYMOUS_EVENTS_PER_MINUTE)
            _suppressed_mark(event, settings.AUDIT_ANONYMOUS_EVENTS_PER_MINUTE)
        with transaction.atomic():
            lock_chain()
            last_id, event.prev_hash = chain_head()
            # The id is hashed, so it is given here rather than by the insert; the lock makes it the next.
            event.id = next_event_id(last_id)
            # Stamped under the lock, so the chain's order is also the order of the timestamps.
            event.created_at = timezone.now()
            event.chain_scheme = AuditEvent.Scheme.KEYED
            event.hash = event_hash(event)
            event.save()
    except Exception as exc:
        _count_failure()
        _log_failure(action, exc)
        return None
    global _in_failure_run
    _in_failure_run = False
    return event


async def arecord(action: str, **kwargs: Any) -> AuditEvent | None:
    """`record` for async code (consumers): runs it in the database thread."""
    return await database_sync_to_async(record)(action, **kwargs)


# ---- the admin's own change history --------------------------------------------------------------
LOG_ENTRY_OPERATIONS = {1: "addition", 2: "change", 3: "deletion"}


def record_log_entries(entries: Iterable[Any]) -> None:
    """An admin_change event for each admin LogEntry (saved one by one, these come through post_save;
    a bulk delete's entries are bulk-created, without signals, and must be passed here)."""
    for entry in entries:
        try:
            actor, content_type = entry.user, entry.content_type
            detail = {
                "object_type": f"{content_type.app_label}.{content_type.model}" if content_type else "",
                "object_id": str(entry.object_id or "")[:64],
                "object_repr": str(entry.object_repr)[:200],
                "operation": LOG_ENTRY_OPERATIONS.get(entry.action_flag, str(entry.action_flag)),
                "change_message": str(entry.get_change_message())[:500],
            }
        except Exception:
            # Like record(): the admin's own save must go on even when its audit trace cannot be made.
            _count_failure()
            log.error("Audit event 'admin_change' could not be built from %r", entry, exc_info=True)
            continue
        record("admin_change", actor=actor, detail=detail)
