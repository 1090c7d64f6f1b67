"""The audit chain is keyed (HMAC-SHA256 with AUDIT_CHAIN_KEY) and covers every field the admin shows;
rows chained before the key (plain SHA-256, no actor) still verify, and nothing downgrades to their scheme."""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import uuid

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from chat.audit import record as audit
from chat.audit.admin import AuditEventAdmin
from chat.audit.chain import ChainReport, verify_chain
from chat.audit.models import ZERO_HASH, AuditEvent

pytestmark = pytest.mark.django_db

# A value for each column, different from what the events below hold (raw SQL, as an attacker with
# write access to the database would change it).
TAMPERED = {
    "id": 10**6,
    "created_at": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
    "actor": None,  # bob's id, filled in by the test
    "actor_name": "alice2",
    "action": "logout",
    "ip": "192.0.2.99",
    "user_agent": "forged agent",
    "request_id": "forged-request",
    "conversation_id": uuid.UUID(int=7).hex,
    "message_id": uuid.UUID(int=8).hex,
    "model": "forged-model",
    "input_sha256": "1" * 64,
    "output_sha256": "2" * 64,
    "prompt_tokens": 99,
    "completion_tokens": 98,
    "latency_ms": 97,
    "status": 599,
    "verdict": "forged",
    "detail": json.dumps({"finish_reason": "forged"}),
    "prev_hash": "f" * 64,
    "chain_scheme": 1,
}


def shown_fields() -> list[str]:
    return [name for name in AuditEventAdmin.readonly_fields if name != "hash"]


def run_command() -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("verify_audit_chain", stdout=out, stderr=err)
    except SystemExit as exit_:
        return exit_.code, out.getvalue() + err.getvalue()
    return 0, out.getvalue() + err.getvalue()


def three(alice) -> list[AuditEvent]:
    return [audit.record("model_call", actor=alice, request=None, model="deepseek-chat", input_text=f"q{i}",
                         conversation_id=uuid.UUID(int=1), message_id=uuid.UUID(int=2), prompt_tokens=1,
                         completion_tokens=2, latency_ms=3, status=200, verdict="allowed",
                         detail={"finish_reason": "stop"}) for i in range(3)]


def test_the_admin_shows_no_field_the_test_below_leaves_out():
    assert set(shown_fields()) == set(TAMPERED)


@pytest.mark.parametrize("field", sorted(TAMPERED))
def test_changing_any_field_the_admin_shows_is_detected(alice, bob, field):
    events = three(alice)
    target = events[1] if field != "id" else events[2]  # an id moved past the last keeps the row order
    column = AuditEvent._meta.get_field(field).column
    value = bob.id if field == "actor" else TAMPERED[field]
    before = AuditEvent.objects.count()
    assert verify_chain().ok
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE chat_auditevent SET {column} = %s WHERE id = %s", [value, target.id])
    report = verify_chain()
    broken = TAMPERED["id"] if field == "id" else target.id
    assert (report.ok, report.first_broken_id) == (False, broken), report
    code, output = run_command()
    assert code == 1 and output.startswith(f"BROKEN at event {broken}: ")
    assert AuditEvent.objects.count() == before


def test_verification_with_another_key_fails_and_the_right_key_verifies(alice):
    with override_settings(AUDIT_CHAIN_KEY="the-key-kept-outside-the-database"):
        events = three(alice)
        assert verify_chain() == ChainReport(ok=True, checked=3, first_broken_id=None, reason="")
    with override_settings(AUDIT_CHAIN_KEY="a-guessed-key"):
        report = verify_chain()
        assert (report.ok, report.first_broken_id) == (False, events[0].id) and "altered" in report.reason
        assert run_command()[0] == 1
    # Without the setting, the key is derived from SECRET_KEY (with its own salt): not the one used above.
    assert verify_chain().first_broken_id == events[0].id
    with override_settings(AUDIT_CHAIN_KEY="the-key-kept-outside-the-database"):
        assert run_command() == (0, "OK: 3 events verified\n")


def test_a_row_rehashed_without_the_key_is_detected(alice):
    """An attacker who can write the database but not read the key: recomputing the hash of a changed
    row, as the unkeyed chain allowed, no longer passes."""
    events = three(alice)
    forged = AuditEvent.objects.get(id=events[1].id)
    forged.verdict = "refused"
    plain = hashlib.sha256(json.dumps({"verdict": "refused"}).encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE chat_auditevent SET verdict = 'refused', hash = %s WHERE id = %s", [plain, forged.id])
    assert verify_chain().first_broken_id == events[1].id


# ---- rows chained before the key -------------------------------------------------------------------
LEGACY_FIELDS = (
    "created_at", "actor_name", "action", "ip", "user_agent", "request_id", "conversation_id", "message_id",
    "model", "input_sha256", "output_sha256", "prompt_tokens", "completion_tokens", "latency_ms", "status",
    "verdict", "detail", "prev_hash",
)


def legacy_hash(fields: dict) -> str:
    """The hash of the chain before it was keyed (chat/audit/chain.py at HASH_FORMAT 1), written out here."""
    data = {name: fields.get(name) for name in LEGACY_FIELDS}
    data["created_at"] = fields["created_at"].astimezone(datetime.UTC).isoformat(timespec="microseconds")
    data["v"] = 1
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def legacy_rows(alice, count: int, prev_hash: str = ZERO_HASH, first_id: int = 1) -> list[AuditEvent]:
    """Rows as the unkeyed chain wrote them (the migration marks existing rows chain_scheme=1)."""
    rows = []
    for index in range(count):
        fields = {"created_at": timezone.now(), "actor_name": "alice", "action": "login", "ip": "203.0.113.9",
                  "user_agent": "old", "request_id": f"old-{index}", "conversation_id": None, "message_id": None,
                  "model": "", "input_sha256": "", "output_sha256": "", "prompt_tokens": None,
                  "completion_tokens": None, "latency_ms": None, "status": None, "verdict": "", "detail": {},
                  "prev_hash": prev_hash}
        prev_hash = legacy_hash(fields)
        row = AuditEvent(id=first_id + index, actor=alice, chain_scheme=1, hash=prev_hash, **fields)
        row.save()
        rows.append(row)
    return rows


def test_rows_of_the_unkeyed_scheme_still_verify_and_the_keyed_chain_goes_on_from_them(alice):
    old = legacy_rows(alice, 3)
    new = three(alice)
    assert new[0].prev_hash == old[-1].hash and new[0].chain_scheme == 2
    assert verify_chain() == ChainReport(ok=True, checked=6, first_broken_id=None, reason="", legacy=3)
    code, output = run_command()
    assert code == 0 and output.startswith("OK: 6 events verified") and "3 of them" in output
    # An old row's actor was not hashed (a deleted user's was set to NULL): changing it breaks nothing.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE chat_auditevent SET actor_id = NULL WHERE id = %s", [old[0].id])
    assert verify_chain().ok


def test_rewriting_the_old_rows_breaks_the_link_of_the_first_keyed_one(alice):
    """The old rows are unkeyed, but the first keyed row hashes the last old row's hash under the key:
    re-chaining the old rows after a change (possible without the key) breaks that link."""
    old = legacy_rows(alice, 3)
    new = three(alice)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM chat_auditevent WHERE id <= {old[-1].id}")
    legacy_rows(alice, 3, first_id=old[0].id)  # the same rows again, with other times: other hashes
    report = verify_chain()
    assert (report.ok, report.first_broken_id) == (False, new[0].id)


def test_an_unkeyed_row_after_keyed_ones_is_refused(alice):
    """Downgrading: appending rows in the old scheme (which needs no key) after the keyed chain."""
    new = three(alice)
    forged = legacy_rows(alice, 1, prev_hash=new[-1].hash, first_id=new[-1].id + 1)[0]
    report = verify_chain()
    assert (report.ok, report.first_broken_id, report.checked) == (False, forged.id, 3)
    assert "unkeyed" in report.reason

