"""The audit log's API: `record()` appends a hash-chained event, `verify_chain()` checks, `prune()` retires."""
from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import json
import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models.signals import post_save
from django.utils import timezone

from chat.audit.models import ZERO_HASH, AuditCheckpoint, AuditEvent, AuditImmutable
from chat.core.metrics import audit_write_failed

__all__ = [
    "AuditImmutable", "ChainReport", "BEAT_SCHEDULE", "arecord", "canonical", "client_ip", "event_hash", "failures",
    "prune", "prune_audit_events", "record", "record_log_entries", "request_id", "text_sha256", "verify_chain",
]

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key shared by every chain append and prune ("audit" in ASCII).
CHAIN_LOCK_KEY = 0x6175646974
# The fields an event's hash covers, in addition to a format version. Not `id` (unknown before the
# insert) and not `actor` (set to NULL when the user is deleted; `actor_name` is hashed instead).
HASHED_FIELDS = (
    "created_at", "actor_name", "action", "ip", "user_agent", "request_id", "conversation_id", "message_id",
    "model", "input_sha256", "output_sha256", "prompt_tokens", "completion_tokens", "latency_ms", "status",
    "verdict", "detail", "prev_hash",
)
HASH_FORMAT = 1
ACTIONS = frozenset(AuditEvent.Action.values)
INT_MAX = 2**31 - 1
BEAT_SCHEDULE = {"prune-audit-events": {"task": "chat.audit.prune_audit_events", "schedule": 24 * 3600}}

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


# ---- canonical form and hashes --------------------------------------------------------------
@functools.lru_cache(maxsize=4096)  # a log holds few distinct addresses, parsed on every verification
def _canonical_ip(value: Any) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return str(value)


def _canonical_uuid(value: Any) -> str | None:
    return str(uuid.UUID(str(value))) if value else None


def _canonical_time(value: datetime.datetime) -> str:
    if timezone.is_aware(value):
        value = value.astimezone(datetime.UTC)
    return value.isoformat(timespec="microseconds")


def canonical(event: AuditEvent | Mapping[str, Any]) -> bytes:
    """The bytes an event's hash is computed over: sorted, compact JSON of HASHED_FIELDS.

    Values are normalised (times in UTC, UUIDs and IPs in their standard spelling) so an event reads
    back from either database to the same bytes it was hashed from."""
    get = event.get if isinstance(event, Mapping) else lambda name: getattr(event, name)
    data: dict[str, Any] = {name: get(name) for name in HASHED_FIELDS}
    data["created_at"] = _canonical_time(data["created_at"])
    data["ip"] = _canonical_ip(data["ip"])
    data["conversation_id"] = _canonical_uuid(data["conversation_id"])
    data["message_id"] = _canonical_uuid(data["message_id"])
    data["v"] = HASH_FORMAT
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def event_hash(event: AuditEvent | Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(event)).hexdigest()


def text_sha256(text: str | None) -> str:
    """The digest stored in place of a prompt or an answer; "" when there is no text."""
    if text is None:
        return ""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# ---- what a request tells ---------------------------------------------------------------------
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


def _meta(request: Any) -> Mapping[str, Any]:
    """request.META, or its equivalent for a Channels scope (a socket's connection)."""
    if isinstance(request, Mapping):
        meta = {
            "HTTP_" + name.decode("latin-1").upper().replace("-", "_"): value.decode("latin-1")
            for name, value in request.get("headers", [])
        }
        client = request.get("client")
        if client:
            meta["REMOTE_ADDR"] = str(client[0])
        return meta
    return getattr(request, "META", {})


def _ip(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("["):  # "[v6]" or "[v6]:port"
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:  # "v4:port"
        value = value.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(value.split("%", 1)[0]))
    except ValueError:
        return None


def client_ip(meta: Mapping[str, Any]) -> str | None:
    """REMOTE_ADDR, unless AUDIT_TRUSTED_PROXY_COUNT proxies stand in front: then the address the
    outermost of them saw. X-Forwarded-For is the client's to forge, so only the proxies' entries count."""
    address = meta.get("REMOTE_ADDR")
    proxies = int(getattr(settings, "AUDIT_TRUSTED_PROXY_COUNT", 0) or 0)
    if proxies > 0:
        hops = [hop.strip() for hop in str(meta.get("HTTP_X_FORWARDED_FOR", "")).split(",") if hop.strip()]
        if hops:
            address = hops[-proxies] if len(hops) >= proxies else hops[0]
    return _ip(address)


def request_id(request: Any) -> str:
    """The request's id: the X-Request-ID header if any, else a new one, kept on the request so every
    event of one request (or one socket connection) shares it."""
    stored = request.get("audit_request_id") if isinstance(request, Mapping) else getattr(
        request, "audit_request_id", None)
    if stored:
        return stored
    value = _text(_meta(request).get("HTTP_X_REQUEST_ID", ""), 64).strip() or uuid.uuid4().hex
    if isinstance(request, dict):
        request["audit_request_id"] = value
    else:
        try:
            request.audit_request_id = value
        except AttributeError:
            pass
    return value


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


# ---- writing ------------------------------------------------------------------------------------
def _lock_chain() -> None:
    """Serialise chain appends until the end of the current transaction.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: nothing to do, because the project opens
    every transaction with BEGIN IMMEDIATE (settings.DATABASES), which already holds the database's
    single write lock. Either way the previous hash must be read after this call."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])


def _chain_head() -> str:
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    if last:
        return last
    return AuditCheckpoint.objects.order_by("-id").values_list("last_hash", flat=True).first() or ZERO_HASH


def _build(action: str, *, actor: Any, request: Any, conversation_id: Any, message_id: Any, model: str,
           input_text: str | None, output_text: str | None, prompt_tokens: int | None,
           completion_tokens: int | None, latency_ms: int | None, status: int | None, verdict: str,
           detail: Mapping[str, Any] | None) -> AuditEvent:
    if action not in ACTIONS:
        # Kept anyway: an event with a new name is better than a lost one.
        log.warning("Audit action %r is not one of AuditEvent.Action", action)
    meta = _meta(request) if request is not None else {}
    actor = _actor_of(actor, request)
    return AuditEvent(
        actor_id=actor.pk if actor is not None else None,
        actor_name=_text(actor.get_username(), 150) if actor is not None else "",
        action=_text(action, 64),
        ip=client_ip(meta),
        user_agent=_text(meta.get("HTTP_USER_AGENT", ""), 256),
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
    async code use `arecord`."""
    try:
        event = _build(action, actor=actor, request=request, conversation_id=conversation_id,
                       message_id=message_id, model=model, input_text=input_text, output_text=output_text,
                       prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, latency_ms=latency_ms,
                       status=status, verdict=verdict, detail=detail)
        with transaction.atomic():
            _lock_chain()
            event.prev_hash = _chain_head()
            # Stamped under the lock, so the chain's order is also the order of the timestamps.
            event.created_at = timezone.now()
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
    from channels.db import database_sync_to_async

    return await database_sync_to_async(record)(action, **kwargs)


# ---- verifying and pruning --------------------------------------------------------------------
@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_broken_id: int | None
    reason: str
    # True when only the newest `limit` events were checked (verify_chain(limit=…)).
    partial: bool = False

    def __str__(self) -> str:
        if self.ok:
            return f"OK: {self.checked} events verified" + (" (the newest only)" if self.partial else "")
        return f"BROKEN at event {self.first_broken_id}: {self.reason}"


ALTERED = "its contents do not match its hash (the event was altered)"
UNLINKED = "its prev_hash does not match the hash of the event before it (an earlier event was deleted or altered)"


def _latest_checkpoint() -> tuple[int, str]:
    checkpoint = AuditCheckpoint.objects.order_by("-id").values_list("last_event_id", "last_hash").first()
    return checkpoint or (0, ZERO_HASH)


def verify_chain(limit: int | None = None) -> ChainReport:
    """Walk the events in id order from the latest checkpoint and report the first broken one.

    An altered event fails its own hash; a deleted one breaks the link of the event after it. It reads
    without locking, so appends go on meanwhile. The chain alone cannot show that its newest events
    were removed: compare `checked` (or the last hash) with an earlier run for that.

    With `limit`, only the newest `limit` events are checked (and their link to the one before):
    the admin's list page does that, since a full walk takes time in proportion to the log."""
    for attempt in range(2):
        after, expected = _latest_checkpoint()
        partial = False
        if limit is not None:
            newest = AuditEvent.objects.filter(id__gt=after).order_by("-id").values_list("id", "hash")
            boundary = newest[limit:limit + 1].first()
            if boundary is not None:
                (after, expected), partial = boundary, True
        checked = 0
        rows = AuditEvent.objects.filter(id__gt=after).order_by("id").values_list("id", "hash", *HASHED_FIELDS)
        for row in rows.iterator(chunk_size=2000):
            fields = dict(zip(HASHED_FIELDS, row[2:], strict=True))
            if event_hash(fields) != row[1]:
                return ChainReport(False, checked, row[0], ALTERED, partial)
            if fields["prev_hash"] != expected:
                if checked == 0 and attempt == 0 and not partial and _latest_checkpoint() != (after, expected):
                    break  # a prune ran between reading the checkpoint and the events: read both again
                return ChainReport(False, checked, row[0], UNLINKED, partial)
            expected = row[1]
            checked += 1
        else:
            return ChainReport(True, checked, None, "", partial)
    return ChainReport(False, 0, None, "the events kept being pruned while they were verified")


def prune(older_than_days: int) -> int:
    """Delete the events older than `older_than_days` days, after a checkpoint with the last one's
    hash, so verify_chain() goes on from there. Returns how many were deleted.

    Only a prefix of the chain (in id order) is deleted: an event stamped before the cutoff but after
    a newer one (a clock step back) waits for the next prune."""
    if older_than_days < 0:
        raise ValueError("older_than_days must be 0 or more")
    cutoff = timezone.now() - datetime.timedelta(days=older_than_days)
    with transaction.atomic():
        _lock_chain()
        first_kept = (AuditEvent.objects.filter(created_at__gte=cutoff).order_by("id")
                      .values_list("id", flat=True).first())
        doomed = AuditEvent.objects.filter(id__lt=first_kept) if first_kept else AuditEvent.objects.all()
        last = doomed.order_by("-id").values_list("id", "hash").first()
        if last is None:
            return 0
        count = doomed.count()
        AuditCheckpoint.objects.create(cutoff=cutoff, last_event_id=last[0], last_hash=last[1], pruned=count)
        deleted = AuditEvent.objects.prune_through(last[0])
    log.info("Pruned %d audit events older than %s (through event %d)", deleted, cutoff.isoformat(), last[0])
    return deleted


@shared_task(name="chat.audit.prune_audit_events")
def prune_audit_events() -> int:
    """The daily retention task (BEAT_SCHEDULE): keeps AUDIT_RETENTION_DAYS days of events."""
    return prune(int(getattr(settings, "AUDIT_RETENTION_DAYS", 365)))


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


def _log_entry_saved(sender: Any, instance: Any, created: bool, raw: bool = False, **kwargs: Any) -> None:
    if created and not raw:
        record_log_entries([instance])


post_save.connect(_log_entry_saved, sender="admin.LogEntry", dispatch_uid="chat.audit.log.admin_change")
