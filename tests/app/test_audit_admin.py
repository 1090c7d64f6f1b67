"""The audit log's admin: staff-only and read-only, filters and search, CSV of the filtered rows, moderation rules."""
from __future__ import annotations

import csv
import io
import re

import pytest
from django.contrib.auth.models import Permission
from django.db import connection

from chat.audit import record as audit
from chat.audit.admin import CSV_FIELDS
from chat.audit.chain import verify_chain
from chat.audit.models import AuditEvent
from chat.moderation.models import ModerationRule

LIST = "/admin/audit/auditevent/"
EXPORT = "/admin/audit/auditevent/export/"


def events() -> dict[str, list[AuditEvent]]:
    """Three exports, two model calls and a blocked one: actions no admin request records by itself
    (assertions count rows by action, so events that requests or logins may add do not disturb them)."""
    return {
        "conversation_exported": [audit.record("conversation_exported", detail={"n": n}) for n in range(3)],
        "model_call": [audit.record("model_call", model="deepseek-chat", input_text=f"q{n}", verdict="allowed")
                       for n in range(2)],
        "moderation_block": [audit.record("moderation_block", model="deepseek-chat", input_text="bad",
                                          verdict="blocked", detail={"rule": 7, "category": "violence"})],
    }


def csv_rows(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def page_text(response) -> str:
    return response.content.decode()


# ---- who may see it ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_staff_see_the_events_with_the_chain_status(admin_client):
    made = events()
    html = page_text(admin_client.get(LIST))
    assert int(re.search(r"Chain OK — (\d+) events", html).group(1)) >= 6
    assert all(f'href="{LIST}{e.id}/change/' in html for group in made.values() for e in group)
    assert "Moderation block" in html and "Conversation exported" in html
    detail = page_text(admin_client.get(f"{LIST}{made['moderation_block'][0].id}/change/"))
    for value in (made["moderation_block"][0].hash, made["moderation_block"][0].prev_hash,
                  made["moderation_block"][0].input_sha256, "violence"):
        assert value in detail
    assert 'class="readonly"' in detail and 'name="_save"' not in detail and 'name="hash"' not in detail


@pytest.mark.django_db
def test_a_long_log_has_only_its_newest_events_verified_on_the_list_page(admin_client, settings):
    events()
    settings.AUDIT_ADMIN_VERIFY_LIMIT = 4
    html = page_text(admin_client.get(LIST))
    assert "Chain OK — the newest 4 events (run manage.py verify_audit_chain to check them all)" in html


@pytest.mark.django_db
def test_a_broken_chain_is_named_on_the_list_page(admin_client):
    made = events()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE chat_auditevent SET verdict = 'allowed' WHERE id = %s", [made["moderation_block"][0].id])
    html = page_text(admin_client.get(LIST))
    assert f"Chain BROKEN at event {made['moderation_block'][0].id}" in html and "Chain OK" not in html


@pytest.mark.django_db
def test_a_staff_member_needs_the_view_permission(client, make_user):
    events()
    staff = make_user("stan")
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    assert client.get(LIST).status_code == 403 and client.get(EXPORT).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    assert client.get(LIST).status_code == 200
    assert len(csv_rows(client.get(EXPORT, {"action__exact": "conversation_exported"}))) == 4


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["anonymous", "non-staff"])
def test_other_users_are_sent_to_the_admin_login_and_see_no_event_data(client, alice, who):
    made = events()
    if who == "non-staff":
        client.force_login(alice)
    event = made["model_call"][0]
    for url in (LIST, f"{LIST}{event.id}/change/", EXPORT, f"{EXPORT}?action__exact=model_call"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url
        followed = client.get(url, follow=True)
        assert 'id="login-form"' in page_text(followed)
        assert event.hash not in page_text(followed) and "model_call" not in page_text(followed).split("next=")[0]


@pytest.mark.django_db
def test_events_cannot_be_added_changed_or_deleted_in_the_admin(admin_client):
    event = events()["conversation_exported"][0]
    assert admin_client.get(f"{LIST}add/").status_code == 403
    assert admin_client.post(f"{LIST}add/", {"action": "login", "prev_hash": "0", "hash": "1"}).status_code == 403
    assert not AuditEvent.objects.filter(hash="1").exists()
    assert admin_client.post(f"{LIST}{event.id}/change/", {"action": "logout"}).status_code == 403
    assert admin_client.get(f"{LIST}{event.id}/delete/").status_code == 403
    assert admin_client.post(f"{LIST}{event.id}/delete/", {"post": "yes"}).status_code == 403
    html = page_text(admin_client.get(LIST))
    assert 'href="/admin/audit/auditevent/add/"' not in html and 'name="action"' not in html  # no bulk actions
    assert AuditEvent.objects.get(id=event.id).action == "conversation_exported"
    made_actions = ["conversation_exported", "model_call", "moderation_block"]
    assert AuditEvent.objects.filter(action__in=made_actions).count() == 6


# ---- filters, search, export ----------------------------------------------------------------------
@pytest.mark.django_db
def test_the_list_filters_by_action_and_verdict_and_searches_by_hash_and_name(admin_client, alice):
    made = events()
    assert page_text(admin_client.get(LIST, {"action__exact": "conversation_exported"})).count(
        'class="field-action"') == 3
    assert page_text(admin_client.get(LIST, {"verdict": "blocked"})).count('class="field-action"') == 1
    target = made["model_call"][1]
    html = page_text(admin_client.get(LIST, {"q": target.hash}))
    assert html.count('class="field-action"') == 1 and f"{LIST}{target.id}/change/" in html
    html = page_text(admin_client.get(LIST, {"q": target.input_sha256}))
    assert html.count('class="field-action"') == 1
    audit.record("conversation_deleted", actor=alice)
    html = page_text(admin_client.get(LIST, {"q": "alic"}))  # part of a name; not a UUID or a digest
    assert html.count('class="field-action"') == 1 and "Conversation deleted" in html


@pytest.mark.django_db
def test_the_export_link_carries_the_filters_and_the_csv_has_only_those_rows(admin_client):
    made = events()
    html = page_text(admin_client.get(LIST, {"action__exact": "model_call"}))
    href = re.search(r'href="([^"]*)" id="audit-export"', html).group(1).replace("&amp;", "&")
    assert href == f"{EXPORT}?action__exact=model_call"
    response = admin_client.get(href)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-events-')
    rows = csv_rows(response)
    assert rows[0] == list(CSV_FIELDS)
    assert sorted(row[0] for row in rows[1:]) == sorted(str(e.id) for e in made["model_call"])
    assert {row[CSV_FIELDS.index("action")] for row in rows[1:]} == {"model_call"}
    # Search narrows the export as it narrows the list.
    rows = csv_rows(admin_client.get(EXPORT, {"action__exact": "model_call", "q": made["model_call"][0].hash}))
    assert [row[CSV_FIELDS.index("hash")] for row in rows[1:]] == [made["model_call"][0].hash]
    assert admin_client.get(EXPORT, {"created_at__year": "not a year"}).status_code == 400


@pytest.mark.django_db
def test_the_csv_defuses_cells_a_spreadsheet_would_run(admin_client, rf):
    request = rf.get("/", HTTP_USER_AGENT="=HYPERLINK(\"http://evil\")")
    audit.record("upload_rejected", request=request)
    [row] = csv_rows(admin_client.get(EXPORT, {"action__exact": "upload_rejected"}))[1:]
    assert row[CSV_FIELDS.index("user_agent")] == "'=HYPERLINK(\"http://evil\")"


# ---- moderation rules -------------------------------------------------------------------------------
RULE = {"kind": "regex", "pattern": r"\bkill\b", "category": "violence", "applies_to": "both", "enabled": "on",
        "note": ""}


@pytest.mark.django_db
@pytest.mark.parametrize("kind,pattern,message", [
    ("regex", "(unclosed", "This regular expression does not compile: missing ), unterminated subpattern"),
    ("regex", "a{2,1}", "does not compile"),
    ("keyword", "   ", "The pattern is empty."),
    ("regex", "a*", "matches empty text"),  # chat.moderation.rules's own check: it would block everything
])
def test_a_rule_with_an_unusable_pattern_gets_a_clear_error_and_nothing_is_saved(admin_client, kind, pattern,
                                                                                   message):
    response = admin_client.post("/admin/moderation/moderationrule/add/", {**RULE, "kind": kind, "pattern": pattern})
    assert response.status_code == 200 and message in page_text(response)
    assert not ModerationRule.objects.exists() and not AuditEvent.objects.filter(action="admin_change").exists()


@pytest.mark.django_db
def test_rule_changes_in_the_admin_become_admin_change_events(admin_client, admin_user):
    # When staff add a rule, change it, then delete two rules at once
    assert admin_client.post("/admin/moderation/moderationrule/add/", RULE).status_code == 302
    rule = ModerationRule.objects.get()
    assert (rule.kind, rule.pattern, rule.category) == ("regex", r"\bkill\b", "violence")
    assert admin_client.post(f"/admin/moderation/moderationrule/{rule.id}/change/",
                             {**RULE, "enabled": ""}).status_code == 302
    other = ModerationRule.objects.create(kind="keyword", pattern="ssn", category="pii")
    response = admin_client.post("/admin/moderation/moderationrule/", {
        "action": "delete_selected", "_selected_action": [rule.id, other.id], "post": "yes"})
    assert response.status_code == 302 and not ModerationRule.objects.exists()
    # Then each left an admin_change event by that user, and the chain holds
    changes = AuditEvent.objects.filter(action="admin_change").order_by("id")
    rule = "moderation.moderationrule"
    assert [(e.actor_id, e.detail["operation"], e.detail["object_type"]) for e in changes] == [
        (admin_user.id, "addition", rule), (admin_user.id, "change", rule),
        (admin_user.id, "deletion", rule), (admin_user.id, "deletion", rule)]
    assert "Enabled" in changes[1].detail["change_message"]
    assert verify_chain().ok


@pytest.mark.django_db
def test_the_rule_list_filters_and_searches(admin_client):
    ModerationRule.objects.create(kind="keyword", pattern="ssn", category="pii", note="US numbers")
    ModerationRule.objects.create(kind="regex", pattern=r"\d{16}", category="pii", enabled=False)
    ModerationRule.objects.create(kind="keyword", pattern="attack", category="violence")
    assert page_text(admin_client.get("/admin/moderation/moderationrule/", {"enabled__exact": "0"})).count(
        'class="field-pattern"') == 1
    html = page_text(admin_client.get("/admin/moderation/moderationrule/", {"q": "US numbers"}))
    assert html.count('class="field-pattern"') == 1 and "ssn" in html
