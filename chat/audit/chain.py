"""The audit log's hash chain: the canonical form an event is hashed in, the chain's lock and head, verify_chain()."""
from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.utils import timezone

from chat.audit.models import ZERO_HASH, AuditCheckpoint, AuditEvent

__all__ = ["ChainReport", "canonical", "chain_head", "event_hash", "lock_chain", "verify_chain"]

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


def lock_chain() -> None:
    """Serialise chain appends until the end of the current transaction.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: nothing to do, because the project opens
    every transaction with BEGIN IMMEDIATE (settings.DATABASES), which already holds the database's
    single write lock. Either way the previous hash must be read after this call."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])


def chain_head() -> str:
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    if last:
        return last
    return AuditCheckpoint.objects.order_by("-id").values_list("last_hash", flat=True).first() or ZERO_HASH


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
