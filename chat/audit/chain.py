"""The audit log's keyed hash chain: the canonical form an event is hashed in, the key, the chain's lock and
head, verify_chain().

Each event's `hash` is an HMAC-SHA256, keyed with a secret kept outside the database (AUDIT_CHAIN_KEY,
else a key derived from SECRET_KEY), over every field the admin shows, `prev_hash` included. Someone who
can write the database but does not hold the key can change a row, but cannot give it a hash that
verifies. Rows written before the chain was keyed (chain_scheme 1: plain SHA-256, without id and actor)
verify by their own rule; the first keyed row hashes the last of them under the key, which seals them."""
from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import ipaddress
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from chat.audit.models import ZERO_HASH, AuditCheckpoint, AuditEvent

__all__ = [
    "ChainReport", "canonical", "chain_head", "chain_key", "event_hash", "lock_chain", "next_event_id", "verify_chain",
]

# pg_advisory_xact_lock key shared by every chain append and prune ("audit" in ASCII).
CHAIN_LOCK_KEY = 0x6175646974
# The fields an unkeyed (chain_scheme 1) event's hash covers, in addition to a format version: not `id`
# and not `actor`, which is why that scheme is no longer written.
UNKEYED_FIELDS = (
    "created_at", "actor_name", "action", "ip", "user_agent", "request_id", "conversation_id", "message_id",
    "model", "input_sha256", "output_sha256", "prompt_tokens", "completion_tokens", "latency_ms", "status",
    "verdict", "detail", "prev_hash",
)
# A keyed event's: every field but `hash` itself (chat.audit.record gives the id before the insert).
KEYED_FIELDS = ("id", "actor_id", "chain_scheme", *UNKEYED_FIELDS)
UNKEYED, KEYED = AuditEvent.Scheme.UNKEYED.value, AuditEvent.Scheme.KEYED.value
# Keeps a key derived from SECRET_KEY apart from every other use of SECRET_KEY.
KEY_SALT = b"deepseek-web chat.audit.chain key"


def chain_key() -> bytes:
    """The HMAC key: AUDIT_CHAIN_KEY, else one derived from SECRET_KEY with its own salt. Both live in
    the environment (or DATA_DIR in development), never in the database the chain protects."""
    configured = str(getattr(settings, "AUDIT_CHAIN_KEY", "") or "")
    if configured:
        return configured.encode()
    return hmac.new(str(settings.SECRET_KEY).encode(), KEY_SALT, hashlib.sha256).digest()


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


def _scheme(event: AuditEvent | Mapping[str, Any]) -> int:
    return event.get("chain_scheme") if isinstance(event, Mapping) else event.chain_scheme


def canonical(event: AuditEvent | Mapping[str, Any]) -> bytes:
    """The bytes an event's hash is computed over: sorted, compact JSON of its scheme's fields.

    Values are normalised (times in UTC, UUIDs and IPs in their standard spelling) so an event reads
    back from either database to the same bytes it was hashed from."""
    get = event.get if isinstance(event, Mapping) else lambda name: getattr(event, name)
    scheme = _scheme(event)
    data: dict[str, Any] = {name: get(name) for name in (UNKEYED_FIELDS if scheme == UNKEYED else KEYED_FIELDS)}
    data["created_at"] = _canonical_time(data["created_at"])
    data["ip"] = _canonical_ip(data["ip"])
    data["conversation_id"] = _canonical_uuid(data["conversation_id"])
    data["message_id"] = _canonical_uuid(data["message_id"])
    data["v"] = scheme
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def event_hash(event: AuditEvent | Mapping[str, Any], key: bytes | None = None) -> str:
    """The hash an event must carry, by its own scheme; `key` defaults to chain_key()."""
    scheme = _scheme(event)
    if scheme == UNKEYED:
        return hashlib.sha256(canonical(event)).hexdigest()
    if scheme != KEYED:
        raise ValueError(f"unknown audit chain scheme {scheme!r}")
    return hmac.new(chain_key() if key is None else key, canonical(event), hashlib.sha256).hexdigest()


def lock_chain() -> None:
    """Serialise chain appends until the end of the current transaction.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: nothing to do, because the project opens
    every transaction with BEGIN IMMEDIATE (settings.DATABASES), which already holds the database's
    single write lock. Either way the previous hash must be read after this call."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])


def chain_head() -> tuple[int, str]:
    """The id and hash of the chain's last event (or of the last pruned one, or 0 and ZERO_HASH): the next
    event takes the next id and links to that hash. Call it after lock_chain()."""
    last = AuditEvent.objects.order_by("-id").values_list("id", "hash").first()
    if last:
        return last
    return _latest_checkpoint()


def next_event_id(last_id: int) -> int:
    """The id of the event appended after `last_id` (chain_head's), given before the insert because
    the hash covers it. PostgreSQL: from the table's sequence (moved past `last_id` if it lags), so
    ids stay unique and increasing; SQLite: the next integer (the chain's lock is its write lock)."""
    if connection.vendor != "postgresql":
        return last_id + 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), GREATEST(nextval(pg_get_serial_sequence("
                       "%s, 'id')), %s))", [AuditEvent._meta.db_table, AuditEvent._meta.db_table, last_id + 1])
        return cursor.fetchone()[0]


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_broken_id: int | None
    reason: str
    # True when only the newest `limit` events were checked (verify_chain(limit=…)).
    partial: bool = False
    # How many of the checked events were chained before the key (chain_scheme 1). Compare with an earlier
    # run: it never grows, since no new event is written that way.
    legacy: int = 0

    def __str__(self) -> str:
        if self.ok:
            return (f"OK: {self.checked} events verified" + (" (the newest only)" if self.partial else "")
                    + (f"; {self.legacy} of them chained before the chain was keyed" if self.legacy else ""))
        return f"BROKEN at event {self.first_broken_id}: {self.reason}"


ALTERED = "its contents do not match its hash (the event was altered)"
UNLINKED = "its prev_hash does not match the hash of the event before it (an earlier event was deleted or altered)"
DOWNGRADED = "it is unkeyed but comes after keyed events (events are only ever written keyed now)"


def _latest_checkpoint() -> tuple[int, str]:
    checkpoint = AuditCheckpoint.objects.order_by("-id").values_list("last_event_id", "last_hash").first()
    return checkpoint or (0, ZERO_HASH)


def verify_chain(limit: int | None = None) -> ChainReport:
    """Walk the events in id order from the latest checkpoint and report the first broken one.

    An altered event fails its own hash; a deleted one breaks the link of the event after it. It reads
    without locking, so appends go on meanwhile. The chain alone cannot show that its newest events
    were removed: compare `checked` (or the last hash) with an earlier run for that.

    With `limit`, only the newest `limit` events are checked (and their link to the one before):
    the admin's list page does that, since a full walk takes time in proportion to the log. Keyed events
    need the key (chain_key): with another, the first of them is reported altered."""
    key = chain_key()
    for attempt in range(2):
        after, expected = _latest_checkpoint()
        partial = keyed_seen = False
        if limit is not None:
            newest = AuditEvent.objects.filter(id__gt=after).order_by("-id").values_list("id", "hash", "chain_scheme")
            boundary = newest[limit:limit + 1].first()
            if boundary is not None:
                after, expected, keyed_seen = boundary[0], boundary[1], boundary[2] == KEYED
                partial = True
        checked = legacy = 0
        rows = AuditEvent.objects.filter(id__gt=after).order_by("id").values_list("hash", *KEYED_FIELDS)
        for row in rows.iterator(chunk_size=2000):
            fields = dict(zip(KEYED_FIELDS, row[1:], strict=True))
            row_id, scheme = fields["id"], fields["chain_scheme"]
            if scheme == UNKEYED and keyed_seen:
                return ChainReport(False, checked, row_id, DOWNGRADED, partial, legacy)
            if scheme not in (UNKEYED, KEYED) or event_hash(fields, key) != row[0]:
                return ChainReport(False, checked, row_id, ALTERED, partial, legacy)
            if fields["prev_hash"] != expected:
                if checked == 0 and attempt == 0 and not partial and _latest_checkpoint() != (after, expected):
                    break  # a prune ran between reading the checkpoint and the events: read both again
                return ChainReport(False, checked, row_id, UNLINKED, partial, legacy)
            expected = row[0]
            checked += 1
            keyed_seen = keyed_seen or scheme == KEYED
            legacy += scheme == UNKEYED
        else:
            return ChainReport(True, checked, None, "", partial, legacy)
    return ChainReport(False, 0, None, "the events kept being pruned while they were verified")
