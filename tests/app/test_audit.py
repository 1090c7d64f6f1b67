"""The audit log: digests instead of text, an unbroken hash chain under concurrency, tamper reports, pruning."""
from __future__ import annotations

import datetime
import hashlib
import io
import logging
import threading
import uuid

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, OperationalError, connection, transaction
from django.test import RequestFactory, override_settings
from django.utils import timezone

from chat.audit import record as audit
from chat.audit.chain import ChainReport, event_hash, verify_chain
from chat.audit.models import ZERO_HASH, AuditCheckpoint, AuditEvent, AuditImmutable
from chat.audit.prune import prune
from chat.conversations.models import Conversation
from deepseek_web.celery import app as celery_app

pytestmark = pytest.mark.django_db


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def chain(n: int, **kwargs) -> list[AuditEvent]:
    return [audit.record("model_call", model="deepseek-chat", input_text=f"q{i}", **kwargs) for i in range(n)]


def run_command() -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("verify_audit_chain", stdout=out, stderr=err)
    except SystemExit as exit_:
        return exit_.code, out.getvalue() + err.getvalue()
    return 0, out.getvalue() + err.getvalue()


def backdate(event: AuditEvent, days: int) -> None:
    """Rewrite an event as if it had been recorded `days` ago (rehashed, relinked: a valid old chain)."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE chat_auditevent SET created_at = %s WHERE id = %s",
                       [event.created_at - datetime.timedelta(days=days), event.id])


def rehash_all() -> None:
    """Recompute every hash and link after test set-up rewrote rows (so only the test's own change breaks)."""
    previous = ZERO_HASH
    for event in AuditEvent.objects.order_by("id"):
        event.prev_hash = previous
        previous = event_hash(event)
        with connection.cursor() as cursor:
            cursor.execute("UPDATE chat_auditevent SET prev_hash = %s, hash = %s WHERE id = %s",
                           [event.prev_hash, previous, event.id])


# ---- what an event holds ---------------------------------------------------------------------
def test_record_stores_digests_of_the_texts_and_never_the_plaintext(alice):
    conversation, message = uuid.uuid4(), uuid.uuid4()
    event = audit.record("model_call", actor=alice, conversation_id=conversation, message_id=str(message),
                         model="deepseek-chat", input_text="my secret question", output_text="the secret answer",
                         prompt_tokens=12, completion_tokens=30, latency_ms=850, status=200, verdict="allowed",
                         detail={"finish_reason": "stop"})
    stored = AuditEvent.objects.get(id=event.id)
    assert stored.input_sha256 == sha("my secret question") and stored.output_sha256 == sha("the secret answer")
    assert (stored.actor, stored.actor_name, stored.conversation_id, stored.message_id) == (
        alice, "alice", conversation, message)
    assert (stored.prompt_tokens, stored.completion_tokens, stored.latency_ms, stored.status, stored.verdict,
            stored.detail) == (12, 30, 850, 200, "allowed", {"finish_reason": "stop"})
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM chat_auditevent")
        row = " ".join(str(value) for value in cursor.fetchone())
    assert "secret" not in row


def test_absent_texts_have_empty_digests_and_an_empty_text_has_the_digest_of_nothing():
    event = audit.record("login_failed", input_text="")
    assert (event.input_sha256, event.output_sha256) == (sha(""), "")


def test_record_reads_ip_user_agent_and_request_id_from_the_request_and_reuses_the_id(alice):
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.9", HTTP_USER_AGENT="U" * 300,
                                   HTTP_X_FORWARDED_FOR="198.51.100.1")
    request.user = alice
    first = audit.record("login", request=request)
    second = audit.record("logout", request=request)
    assert (first.ip, first.user_agent, first.actor_name) == ("203.0.113.9", "U" * 256, "alice")
    assert len(first.request_id) == 32 and second.request_id == first.request_id == request.audit_request_id
    tagged = RequestFactory().get("/", HTTP_X_REQUEST_ID="req-42")
    with override_settings(AUDIT_TRUSTED_PROXY_COUNT=1):  # a proxy's id (tests/app/test_log_context.py)
        assert audit.record("http_request", request=tagged, status=404).request_id == "req-42"


@pytest.mark.parametrize("proxies,forwarded,expected", [
    (0, "198.51.100.1", "203.0.113.9"),  # not trusted: the peer's address
    (1, "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # one proxy: the entry it appended; the forged one ignored
    (2, "6.6.6.6, 198.51.100.1, 10.0.0.2", "198.51.100.1"),
    (1, "not an address", None),
])
def test_x_forwarded_for_counts_only_behind_trusted_proxies(proxies, forwarded, expected):
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR=forwarded)
    with override_settings(AUDIT_TRUSTED_PROXY_COUNT=proxies):
        assert audit.record("http_request", request=request).ip == expected


def test_a_channels_scope_serves_as_the_request(alice):
    scope = {"type": "websocket", "client": ["2001:db8::1", 5000], "user": alice,
             "headers": [(b"user-agent", b"socket client"), (b"x-request-id", b"ws-1")]}
    with override_settings(AUDIT_TRUSTED_PROXY_COUNT=1):
        event = audit.record("model_call", request=scope)
    assert (event.ip, event.user_agent, event.request_id, event.actor_id) == ("2001:db8::1", "socket client",
                                                                                "ws-1", alice.id)
    assert verify_chain().ok


def test_odd_values_are_stored_safely_and_still_verify():
    # Given text no database stores as is, values out of range and detail that is not JSON
    event = audit.record("http_request", model="m\x00odel", input_text="lone \ud800 surrogate", latency_ms=-5,
                         status=99999, detail={"when": timezone.now(), "id": uuid.uuid4(), "nan": float("nan"),
                                               "text": "a\x00b\udfff", "obj": object()})
    # Then it is written anyway, cleaned, and the chain verifies from what reads back
    assert event is not None and AuditEvent.objects.get().model == "model"
    stored = AuditEvent.objects.get()
    assert (stored.latency_ms, stored.status, stored.detail["nan"], stored.detail["text"]) == (0, 32767, "NaN",
                                                                                             "ab?")
    assert verify_chain().ok


@pytest.mark.django_db(transaction=True)
async def test_async_code_records_through_arecord():
    event = await audit.arecord("model_call", model="deepseek-chat", output_text="streamed")
    assert event.output_sha256 == sha("streamed")
    assert await AuditEvent.objects.filter(id=event.id).aexists()


def test_an_unknown_action_or_a_bad_id_is_kept_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="chat.audit.record"):
        event = audit.record("something_new", conversation_id="not-a-uuid", message_id="")
    assert (event.action, event.conversation_id, event.message_id) == ("something_new", None, None)
    assert "something_new" in caplog.text and "not-a-uuid" in caplog.text


def test_deleting_the_user_keeps_the_name_the_id_and_the_chain(alice):
    event = audit.record("signup", actor=alice)
    alice_id = alice.id
    alice.delete()
    stored = AuditEvent.objects.get(id=event.id)
    # The actor's id is hashed (tests/app/test_audit_chain_key.py): it stays, pointing at no user.
    assert (stored.actor_id, stored.actor_name) == (alice_id, "alice")
    assert verify_chain().ok


# ---- the chain ---------------------------------------------------------------------------------
def test_each_event_carries_the_hash_of_the_one_before():
    events = chain(3)
    assert events[0].prev_hash == ZERO_HASH
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert all(e.hash == event_hash(AuditEvent.objects.get(id=e.id)) for e in events)
    assert verify_chain() == ChainReport(ok=True, checked=3, first_broken_id=None, reason="")
    assert run_command() == (0, "OK: 3 events verified\n")


def test_an_empty_log_verifies():
    assert verify_chain().ok and run_command() == (0, "OK: 0 events verified\n")


@pytest.mark.parametrize("attempt", ["save", "delete", "update", "queryset delete", "bulk_create", "bulk_update"])
def test_events_cannot_be_changed_or_deleted_through_the_orm(attempt):
    event = chain(1)[0]
    with pytest.raises(AuditImmutable):
        if attempt == "save":
            event.model = "forged"
            event.save()
        elif attempt == "delete":
            event.delete()
        elif attempt == "update":
            AuditEvent.objects.filter(id=event.id).update(model="forged")
        elif attempt == "queryset delete":
            AuditEvent.objects.all().delete()
        elif attempt == "bulk_create":
            AuditEvent.objects.bulk_create([AuditEvent(action="login", prev_hash="x", hash="y")])
        else:
            AuditEvent.objects.bulk_update([event], ["model"])
    assert list(AuditEvent.objects.values_list("id", "model")) == [(event.id, "deepseek-chat")]


def test_a_row_altered_by_raw_sql_is_reported_at_that_event():
    events = chain(5)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE chat_auditevent SET model = 'x' WHERE id = %s", [events[2].id])
    report = verify_chain()
    assert (report.ok, report.first_broken_id, report.checked) == (False, events[2].id, 2)
    assert "altered" in report.reason
    code, output = run_command()
    assert code == 1 and output.startswith(f"BROKEN at event {events[2].id}: ")


def test_a_deleted_middle_row_is_reported_at_the_next_event():
    events = chain(5)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM chat_auditevent WHERE id = %s", [events[2].id])
    report = verify_chain()
    assert (report.ok, report.first_broken_id) == (False, events[3].id) and "deleted" in report.reason
    code, output = run_command()
    assert code == 1 and f"BROKEN at event {events[3].id}" in output


def test_a_forged_hash_that_matches_the_forged_row_breaks_the_next_link():
    events = chain(3)
    forged = AuditEvent.objects.get(id=events[1].id)
    forged.verdict = "allowed"
    with connection.cursor() as cursor:
        cursor.execute("UPDATE chat_auditevent SET verdict = %s, hash = %s WHERE id = %s",
                       ["allowed", event_hash(forged), forged.id])
    assert verify_chain().first_broken_id == events[2].id


def test_a_limited_verification_checks_only_the_newest_events_and_their_link():
    events = chain(5)
    report = verify_chain(limit=2)
    assert (report.ok, report.checked, report.partial) == (True, 2, True)
    assert verify_chain(limit=10) == ChainReport(ok=True, checked=5, first_broken_id=None, reason="")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE chat_auditevent SET model = 'x' WHERE id = %s", [events[0].id])
        cursor.execute("DELETE FROM chat_auditevent WHERE id = %s", [events[2].id])
    # The window (events 3 and 4) misses the altered first event, but sees the deletion right before it
    assert verify_chain(limit=2).first_broken_id == events[3].id
    assert verify_chain(limit=1).ok
    assert verify_chain().first_broken_id == events[0].id


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_build_one_unbroken_chain():
    # Given four threads that each record 25 events at the same moment
    failures_before = audit.failures()
    start = threading.Barrier(4)
    results: list[AuditEvent | None] = []

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(25):
                results.append(audit.record("model_call", model=f"writer-{n}", input_text=str(i)))
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then all 100 are stored, none failed, and they form one chain (no fork: every prev_hash is distinct)
    assert len(results) == 100 and all(results) and audit.failures() == failures_before
    assert AuditEvent.objects.count() == 100
    assert len(set(AuditEvent.objects.values_list("prev_hash", flat=True))) == 100
    assert verify_chain() == ChainReport(ok=True, checked=100, first_broken_id=None, reason="")


# ---- pruning -----------------------------------------------------------------------------------
def test_prune_deletes_old_events_behind_a_checkpoint_and_the_chain_still_verifies():
    # Given five events of which the first three are 400 days old
    events = chain(5)
    for event in events[:3]:
        backdate(event, 400)
    rehash_all()
    # When events older than 365 days are pruned
    assert prune(365) == 3
    # Then the two recent ones stay, a checkpoint holds the last pruned one, and the chain verifies
    assert list(AuditEvent.objects.order_by("id").values_list("id", flat=True)) == [events[3].id, events[4].id]
    checkpoint = AuditCheckpoint.objects.get()
    assert (checkpoint.last_event_id, checkpoint.last_hash, checkpoint.pruned) == (
        events[2].id, AuditEvent.objects.get(id=events[3].id).prev_hash, 3)
    assert verify_chain() == ChainReport(ok=True, checked=2, first_broken_id=None, reason="")
    assert prune(365) == 0 and AuditCheckpoint.objects.count() == 1
    # And a deletion just after the checkpoint is still caught
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM chat_auditevent WHERE id = %s", [events[3].id])
    assert verify_chain().first_broken_id == events[4].id


def test_after_pruning_everything_new_events_link_to_the_checkpoint():
    events = chain(2)
    assert prune(0) == 2 and not AuditEvent.objects.exists()
    new = audit.record("login")
    assert new.prev_hash == events[-1].hash == AuditCheckpoint.objects.get().last_hash
    assert verify_chain() == ChainReport(ok=True, checked=1, first_broken_id=None, reason="")


def test_checkpoints_cannot_be_changed_or_deleted():
    chain(1)
    prune(0)
    checkpoint = AuditCheckpoint.objects.get()
    with pytest.raises(AuditImmutable):
        checkpoint.save()
    with pytest.raises(AuditImmutable):
        AuditCheckpoint.objects.update(last_hash=ZERO_HASH)
    with pytest.raises(AuditImmutable):
        checkpoint.delete()


def test_the_retention_task_reads_the_setting_and_is_scheduled_daily():
    events = chain(3)
    backdate(events[0], 40)
    rehash_all()
    with override_settings(AUDIT_RETENTION_DAYS=30):
        assert celery_app.tasks["chat.audit.prune_audit_events"].apply().get() == 1
    assert AuditEvent.objects.count() == 2 and verify_chain().ok
    assert settings.CELERY_BEAT_SCHEDULE["prune-audit-events"] == {"task": "chat.audit.prune_audit_events",
                                                                   "schedule": 24 * 3600}


# ---- failures never reach the caller ----------------------------------------------------------
def test_when_the_audit_insert_fails_record_returns_none_logs_counts_and_the_callers_write_commits(
        alice, monkeypatch, caplog):
    # Given an audit table that cannot be written (a real database error, which aborts a PostgreSQL transaction)
    def broken_insert(self, *args, **kwargs):
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO chat_auditevent_gone (id) VALUES (1)")

    monkeypatch.setattr(AuditEvent, "save", broken_insert)
    before, events_before = audit.failures(), AuditEvent.objects.count()
    # When a caller records inside its own transaction, and goes on writing after
    with caplog.at_level(logging.ERROR, logger="chat.audit.record"), transaction.atomic():
        Conversation.objects.create(user=alice, model="deepseek-chat", title="first")
        assert audit.record("conversation_deleted", actor=alice) is None
        Conversation.objects.create(user=alice, model="deepseek-chat", title="second")
    # Then its writes are saved, the failure is logged with its traceback and counted, and no event exists
    assert sorted(Conversation.objects.values_list("title", flat=True)) == ["first", "second"]
    assert audit.failures() == before + 1
    [entry] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "conversation_deleted" in entry.getMessage() and entry.exc_info[0] is not None
    assert issubclass(entry.exc_info[0], DatabaseError)
    monkeypatch.undo()
    assert AuditEvent.objects.count() == events_before


def test_a_run_of_audit_failures_logs_one_traceback_then_one_line_each_until_a_write_succeeds(
        alice, monkeypatch, caplog):
    def broken_insert(self, *args, **kwargs):
        raise OperationalError("connection to server at \"127.0.0.1\", port 5432 failed: Connection refused")

    monkeypatch.setattr(audit, "_in_failure_run", False)
    monkeypatch.setattr(AuditEvent, "save", broken_insert)
    with caplog.at_level(logging.ERROR, logger="chat.audit.record"):
        for _ in range(3):
            assert audit.record("login", actor=alice) is None
        monkeypatch.undo()  # the database is back
        assert audit.record("login", actor=alice) is not None
        monkeypatch.setattr(AuditEvent, "save", broken_insert)
        assert audit.record("logout", actor=alice) is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.exc_info is not None for r in errors] == [True, False, False, True]
    assert "Connection refused" in errors[1].getMessage() and "OperationalError" in errors[1].getMessage()


def test_an_event_recorded_in_a_transaction_that_rolls_back_goes_with_it(alice):
    exports = AuditEvent.objects.filter(action="conversation_exported")
    with pytest.raises(RuntimeError), transaction.atomic():
        audit.record("conversation_exported", actor=alice)
        raise RuntimeError("the request failed")
    assert not exports.exists()
    audit.record("conversation_exported", actor=alice)  # after the caller's transaction: kept
    assert exports.count() == 1 and verify_chain().ok
