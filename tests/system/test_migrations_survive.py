"""A database made by the code before the re-layout upgrades with `migrate` and reads back unchanged.

The previous main (OLD_COMMIT) is exported from git and run in a subprocess: it migrates a fresh SQLite or
PostgreSQL database and fills every table (conversations, messages, an attachment, API keys and usage, a
hash-chained audit log with a pruning checkpoint, moderation rules, users, a group and direct permissions on
the models that later changed app, admin log entries about them, a session, axes' records). The code of this
checkout then runs `migrate` on it. Every row must read back as it was; the content types of the models that
moved (ApiKey, ApiUsage to "accounts", AuditEvent, AuditCheckpoint to "audit", ModerationRule to "moderation")
are relabelled in place, so permissions, group and user grants and admin log entries follow them; the audit
chain still verifies; `makemigrations --check` finds nothing; and the new ORM reads the moved rows.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
# The last commit before the re-layout (models in the app "chat", migrations in chat/migrations).
OLD_COMMIT = "aa908e3"
# A local server with trust auth (CI's, and a developer's); the test makes a database of its own there.
POSTGRES_SERVER = "postgres://postgres@127.0.0.1:5432"
# model -> its app label after the re-layout (it was "chat")
MOVED = {
    "apikey": "accounts",
    "apiusage": "accounts",
    "auditevent": "audit",
    "auditcheckpoint": "audit",
    "moderationrule": "moderation",
}
# The migrations the upgrade applies (all state-only but for 0008's relabelling of the content types).
NEW_MIGRATIONS = {("chat", "0008_models_move_to_their_apps"), ("accounts", "0001_initial"),
                  ("audit", "0001_initial"), ("moderation", "0001_initial")}
# The tables the upgrade may change: new migration rows, the moved models' content type labels, and the added
# models' permissions (test_permissions_and_grants_follow_the_moved_models checks the old ones keep their ids
# and names).
CHANGING = {"django_migrations", "django_content_type", "auth_permission"}
# Columns later migrations add (issue 16): the audit chain's scheme (events chained before the chain was keyed;
# the chain is verified below) and the tokens held by answers in flight. The old columns read back unchanged.
ADDED_COLUMNS = {"chat_auditevent": {"chain_scheme"}, "chat_apiusage": {"reserved_tokens"}}
# Models later migrations add (issue 16): their tables, content types and permissions come after the old ones.
ADDED_MODELS = {("accounts", "pendingsignup"), ("accounts", "tokenreservation"), ("accounts", "usersession"),
                ("accounts", "chatusage")}
ADDED_TABLES = {f"{label}_{model}" for label, model in ADDED_MODELS}
# Settings a developer's shell or the test run may carry that would aim the subprocesses elsewhere.
CLEARED = ("DATABASE_URL", "DATA_DIR", "DJANGO_ENV", "DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "PYTHONPATH",
           "STATIC_ROOT", "ALLOWED_HOSTS")

# Run by the OLD code (`manage.py shell -c`): a row in every table, and permissions, grants and admin log
# entries on each model that moved later. Audit events go through chat.audit.record (a valid chain) and
# chat.audit.prune (a checkpoint the chain goes on from).
SEED = textwrap.dedent("""
    import datetime, hashlib, json

    import chat
    from axes.models import AccessAttempt, AccessAttemptExpiration, AccessFailureLog, AccessLog
    from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
    from django.contrib.auth.models import Group, Permission, User
    from django.contrib.contenttypes.models import ContentType
    from django.contrib.sessions.backends.db import SessionStore
    from django.utils import timezone

    from chat import audit
    from chat.models import (ApiKey, ApiUsage, Attachment, AuditCheckpoint, AuditEvent, Conversation, Message,
                             ModerationRule)

    def digest(text):
        return hashlib.sha256(text.encode()).hexdigest()

    def perm(action, model):
        return Permission.objects.get(content_type__app_label="chat", codename=f"{action}_{model}")

    admin = User.objects.create_superuser("admin", "admin@example.com", None)
    alice = User.objects.create_user("alice", "alice@example.com", None, first_name="Alice")
    bob = User.objects.create_user("bob", None, None)
    auditors = Group.objects.create(name="auditors")
    auditors.permissions.add(perm("view", "auditevent"), perm("view", "auditcheckpoint"),
                             perm("change", "moderationrule"), perm("view", "apiusage"), perm("view", "conversation"))
    alice.groups.add(auditors)
    alice.user_permissions.add(perm("change", "apikey"), perm("add", "moderationrule"))
    bob.user_permissions.add(perm("delete", "apiusage"), perm("view", "message"))

    key = ApiKey.objects.create(user=alice, name="laptop", prefix="sk-laptop", key_hash=digest("sk-laptop-secret"),
                                last_used_at=timezone.now())
    ApiKey.objects.create(user=bob, prefix="sk-old", key_hash=digest("sk-old-secret"), revoked_at=timezone.now())
    usage = ApiUsage.objects.create(user=alice, day=datetime.date(2026, 11, 28), requests=3, prompt_tokens=120,
                                    completion_tokens=2**40)
    ApiUsage.objects.create(user=alice, day=datetime.date(2026, 11, 29), requests=1)
    api_chat = Conversation.objects.create(user=alice, title="Through the API", model="deepseek-chat", source="api",
                                           api_key=key, stop=["END", "\\n\\n"], seed=7, temperature=0.5, top_p=0.9,
                                           max_tokens=256)
    question = Message.objects.create(conversation=api_chat, position=1, role="user", content="Hello?")
    answer = Message.objects.create(conversation=api_chat, position=2, parent=question, role="assistant",
                                    content="Hi.", reasoning="Greet back.", finish_reason="stop", seq=3,
                                    prompt_tokens=5, completion_tokens=2)
    api_chat.current_leaf = answer
    api_chat.save()
    page_chat = Conversation.objects.create(user=bob, title="Zürich — ünïcode ✓", model="deepseek-chat",
                                            system_prompt="Be brief.")
    pending = Message.objects.create(conversation=page_chat, position=1, role="user", content="What is this?")
    Message.objects.create(conversation=page_chat, position=2, parent=pending, role="assistant", status="streaming")
    Attachment.objects.create(owner=bob, message=pending, file="attachments/0123abcd.png",
                              thumbnail="attachments/4567ef01.webp", sha256=digest("png"), size=1234,
                              mime="image/png", width=64, height=48)
    rule = ModerationRule.objects.create(pattern="forbidden phrase", note="seeded by the upgrade test")
    ModerationRule.objects.create(kind="regex", pattern=r"\\bsecret-\\d+\\b", category="credentials",
                                  applies_to="input", enabled=False)

    events = [audit.record("signup", actor=alice, detail={"how": "form"}),
              audit.record("api_key_created", actor=alice, detail={"prefix": key.prefix})]
    pruned = audit.prune(0)
    events += [
        audit.record("model_call", actor=alice, conversation_id=api_chat.id, message_id=answer.id,
                     model="deepseek-chat", input_text="Hello?", output_text="Hi.", prompt_tokens=5,
                     completion_tokens=2, latency_ms=120, status=200, verdict="allowed"),
        audit.record("login_failed", verdict="refused", detail={"username": "mallory"}),
    ]
    assert None not in events and pruned == 2, (events, pruned)
    event, checkpoint = AuditEvent.objects.order_by("id").first(), AuditCheckpoint.objects.get()

    # Admin log entries about each model that moves (each also appends an admin_change audit event).
    for flag, obj in [(ADDITION, key), (CHANGE, usage), (CHANGE, event), (CHANGE, checkpoint), (DELETION, rule),
                      (CHANGE, api_chat)]:
        LogEntry.objects.create(user=admin, content_type=ContentType.objects.get_for_model(type(obj)),
                                object_id=str(obj.pk), object_repr=str(obj)[:200], action_flag=flag,
                                change_message=json.dumps([{"changed": {"fields": ["Note"]}}]))

    session = SessionStore()
    session["_auth_user_id"] = str(alice.pk)
    session.create()
    attempt = AccessAttempt.objects.create(username="mallory", ip_address="203.0.113.9", user_agent="curl/8",
                                           http_accept="*/*", path_info="/accounts/login/", get_data="",
                                           post_data="username=mallory", failures_since_start=3)
    AccessAttemptExpiration.objects.create(access_attempt=attempt,
                                           expires_at=timezone.now() + datetime.timedelta(hours=1))
    AccessLog.objects.create(username="alice", ip_address="2001:db8::1", user_agent="Firefox", http_accept="text/html",
                             path_info="/accounts/login/", session_hash=digest(session.session_key))
    AccessFailureLog.objects.create(username="mallory", ip_address="203.0.113.9", user_agent="curl/8",
                                    http_accept="*/*", path_info="/accounts/login/", locked_out=True)
    print(json.dumps({"chat": chat.__file__, "chain": str(audit.verify_chain())}))
""")

# Run by the NEW code after the upgrade: the moved rows through the new models, their relations, the
# permissions and admin log entries through the relabelled content types; and it appends an audit event.
PROBE = textwrap.dedent("""
    import importlib, json

    import chat
    from django.contrib.admin.models import LogEntry
    from django.contrib.auth.models import User
    from django.contrib.contenttypes.models import ContentType

    from chat.accounts.models import ApiKey, ApiUsage
    from chat.audit.models import AuditCheckpoint, AuditEvent
    from chat.conversations.models import Attachment, Conversation, Message
    from chat.moderation.models import ModerationRule

    models = [ApiKey, ApiUsage, AuditCheckpoint, AuditEvent, Attachment, Conversation, Message, ModerationRule]
    alice, bob = User.objects.get(username="alice"), User.objects.get(username="bob")
    api_chat = Conversation.objects.get(title="Through the API")
    key = ApiKey.objects.get(name="laptop")
    entries = []
    for entry in LogEntry.objects.order_by("id"):
        try:
            edited = entry.get_edited_object()
        except Exception as error:  # a content type without a model: the entry lost its object
            edited = error
        entries.append({"label": f"{entry.content_type.app_label}.{entry.content_type.model}",
                        "object": getattr(edited, "_meta", None) and edited._meta.label_lower,
                        "same_pk": str(getattr(edited, "pk", None)) == entry.object_id})
    out = {
        "chat": chat.__file__,
        "tables": {model._meta.label: model._meta.db_table for model in models},
        "counts": {model._meta.db_table: model.objects.count() for model in models},
        "content_types": {model._meta.label_lower: ContentType.objects.get_for_model(model).app_label
                          for model in models},
        "conversation_key": [api_chat.api_key.name, api_chat.api_key.user.username],
        "key_conversations": [c.title for c in key.conversations.all()],
        "alice_keys": sorted(k.prefix for k in alice.api_keys.all()),
        "alice_usage": [str(u.day) for u in alice.api_usage.order_by("day")],
        "rules": [[r.kind, r.pattern, r.enabled] for r in ModerationRule.objects.order_by("id")],
        "alice_perms": sorted(alice.get_all_permissions()),
        "bob_perms": sorted(bob.get_all_permissions()),
        "entries": entries,
        "checkpoint": AuditCheckpoint.objects.latest().pruned,
    }
    # One more event through the new code's record().
    from chat.audit.record import record
    out["recorded"] = record("login", actor=alice) is not None
    print(json.dumps(out))
""")


def new_label(app_label: str, model: str) -> str:
    """The app label a content type of the old code has after the upgrade."""
    return MOVED.get(model, app_label) if app_label == "chat" else app_label


@dataclass
class Snapshot:
    """What a database holds: every table's rows, and the rows that point at content types, by label."""

    tables: dict[str, tuple[list[str], list[tuple]]]
    # (id, app_label, model)
    content_types: list[tuple]
    # (id, app_label, model, codename, name)
    permissions: list[tuple]
    # (group or user name, app_label, model, codename)
    group_grants: list[tuple]
    user_grants: list[tuple]
    # (id, app_label, model, object_id, object_repr, action_flag, user)
    admin_log: list[tuple]

    def rows(self, table: str) -> list[tuple]:
        return self.tables[table][1]


VIEWS = {
    "content_types": "SELECT id, app_label, model FROM django_content_type ORDER BY id",
    "permissions": """SELECT p.id, ct.app_label, ct.model, p.codename, p.name FROM auth_permission p
                      JOIN django_content_type ct ON ct.id = p.content_type_id ORDER BY p.id""",
    "group_grants": """SELECT g.name, ct.app_label, ct.model, p.codename FROM auth_group_permissions gp
                       JOIN auth_group g ON g.id = gp.group_id JOIN auth_permission p ON p.id = gp.permission_id
                       JOIN django_content_type ct ON ct.id = p.content_type_id ORDER BY gp.id""",
    "user_grants": """SELECT u.username, ct.app_label, ct.model, p.codename FROM auth_user_user_permissions up
                      JOIN auth_user u ON u.id = up.user_id JOIN auth_permission p ON p.id = up.permission_id
                      JOIN django_content_type ct ON ct.id = p.content_type_id ORDER BY up.id""",
    "admin_log": """SELECT l.id, ct.app_label, ct.model, l.object_id, l.object_repr, l.action_flag, u.username
                    FROM django_admin_log l LEFT JOIN django_content_type ct ON ct.id = l.content_type_id
                    JOIN auth_user u ON u.id = l.user_id ORDER BY l.id""",
}


@dataclass
class Database:
    backend: str
    url: str
    path: Path | None = None  # SQLite's file

    def connect(self) -> Any:
        return sqlite3.connect(self.path) if self.backend == "sqlite" else psycopg.connect(self.url)

    def snapshot(self) -> Snapshot:
        with self.connect() as connection:
            cursor = connection.cursor()
            if self.backend == "sqlite":
                cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            else:
                cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            tables = {}
            for (table,) in sorted(cursor.fetchall()):
                cursor.execute(f'SELECT * FROM "{table}" ORDER BY 1')
                tables[table] = ([column[0] for column in cursor.description], cursor.fetchall())
            views = {}
            for name, query in VIEWS.items():
                cursor.execute(query)
                views[name] = [tuple(row) for row in cursor.fetchall()]
        return Snapshot(tables=tables, **views)


@dataclass
class Upgrade:
    """One database taken through the upgrade, and what each step said."""

    database: Database
    seeded: dict
    before: Snapshot
    migrate: subprocess.CompletedProcess
    after: Snapshot
    verify_chain: subprocess.CompletedProcess
    makemigrations: subprocess.CompletedProcess
    probe: subprocess.CompletedProcess | None = None  # PROBE, run when the migrate succeeded
    # verify_audit_chain once more, after the probe appended an event with the new code
    verify_chain_again: subprocess.CompletedProcess | None = None


def manage(tree: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)


def succeeded(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (f"{' '.join(result.args[1:])} exited {result.returncode}:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result.stdout


def last_json_line(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory) -> Path:
    """The previous main's files, exported from this clone's history."""
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        pytest.fail(f"commit {OLD_COMMIT} (the code before the re-layout) is not in the clone at {ROOT}: this test "
                    f"builds its database with it. In a shallow clone run `git fetch --unshallow` first. "
                    f"({found.stderr.strip()})")
    tree = tmp_path_factory.mktemp("previous-main")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_COMMIT], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    assert (tree / "chat" / "migrations" / "0007_audit_login_locked.py").exists()
    return tree


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request, tmp_path_factory) -> Iterator[Database]:
    """A fresh, empty database of each backend (PostgreSQL only where a server answers)."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "db.sqlite3"
        yield Database("sqlite", f"sqlite:///{path}", path)
        return
    try:
        server = psycopg.connect(f"{POSTGRES_SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        reason = (str(error).strip().splitlines() or ["no answer"])[0]
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES_SERVER}: {reason}")
    name = f"dsw_upgrade_{uuid.uuid4().hex[:12]}"
    with server:
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield Database("postgresql", f"{POSTGRES_SERVER}/{name}")
        finally:
            server.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def upgrade(old_tree, database, tmp_path_factory) -> Upgrade:
    """Build and fill the database with the previous main, then migrate it with this checkout's code."""
    env = {name: value for name, value in os.environ.items() if name not in CLEARED}
    env.update(DATABASE_URL=database.url, DATA_DIR=str(tmp_path_factory.mktemp("data")), DJANGO_ENV="development",
               DJANGO_SETTINGS_MODULE="deepseek_web.settings", SECRET_KEY="upgrade-test-" + "k" * 50)

    succeeded(manage(old_tree, env, "migrate", "--noinput"))
    seeded = last_json_line(succeeded(manage(old_tree, env, "shell", "-c", SEED)))
    assert Path(seeded["chat"]).resolve().is_relative_to(old_tree.resolve()), seeded  # really the old code
    before = database.snapshot()

    migrate = manage(ROOT, env, "migrate", "--noinput")
    after = database.snapshot()
    with ThreadPoolExecutor(2) as pool:  # two read-only checks at once (each start of the code takes seconds)
        verify_chain = pool.submit(manage, ROOT, env, "verify_audit_chain")
        makemigrations = pool.submit(manage, ROOT, env, "makemigrations", "--check", "--dry-run")
        result = Upgrade(database, seeded, before, migrate, after, verify_chain.result(), makemigrations.result())
    if migrate.returncode == 0:
        result.probe = manage(ROOT, env, "shell", "-c", PROBE)
        result.verify_chain_again = manage(ROOT, env, "verify_audit_chain")
    return result


def test_the_previous_main_filled_every_table_with_a_valid_audit_chain(upgrade):
    empty = [table for table, (_, rows) in upgrade.before.tables.items() if not rows]

    assert not empty, f"the seed left these tables empty, so the test would not see their rows: {empty}"
    events = upgrade.before.rows("chat_auditevent")  # after the checkpoint, and one admin_change per log entry
    assert len(upgrade.before.rows("chat_auditcheckpoint")) == 1 and len(events) == 2 + 6
    assert upgrade.seeded["chain"] == f"OK: {len(events)} events verified"
    assert {(label, model) for _, label, model in upgrade.before.content_types} >= {("chat", m) for m in MOVED}


def test_migrate_applies_the_new_migrations(upgrade):
    succeeded(upgrade.migrate)
    before = set(upgrade.before.rows("django_migrations"))
    after = set(upgrade.after.rows("django_migrations"))

    assert before <= after  # nothing recorded as applied was dropped
    applied = {(app, name) for _, app, name, _ in after - before}
    assert NEW_MIGRATIONS <= applied, applied


def test_every_other_table_reads_back_unchanged(upgrade):
    # The chat_* tables (the moved models' included), users and groups, the permissions (same ids, same
    # content type ids), the grants, the admin log, sessions, axes: byte for byte what the old code wrote.
    assert set(upgrade.after.tables) == set(upgrade.before.tables) | ADDED_TABLES
    chat_tables = [table for table in upgrade.before.tables if table.startswith("chat_")]
    assert {f"chat_{model}" for model in MOVED} <= set(chat_tables)
    for table, added in ADDED_COLUMNS.items():
        assert set(upgrade.after.tables[table][0]) - set(upgrade.before.tables[table][0]) == added, table
    changed = [table for table in upgrade.before.tables
               if table not in CHANGING and old_columns(upgrade, table) != upgrade.before.tables[table]]

    assert not changed, f"rows changed by the upgrade in {changed}"
    for table in chat_tables:
        assert old_columns(upgrade, table) == upgrade.before.tables[table], table


def old_columns(upgrade, table: str) -> tuple[list[str], list[tuple]]:
    """The table after the upgrade, in the columns it had before (a column added since is left out)."""
    (columns, rows), (old, _) = upgrade.after.tables[table], upgrade.before.tables[table]
    if columns == old:
        return columns, rows
    kept = [columns.index(name) for name in old if name in columns]
    return [columns[i] for i in kept], [tuple(row[i] for i in kept) for row in rows]


def test_the_moved_models_content_types_are_relabelled_in_place_without_duplicates(upgrade):
    expected = [(id_, new_label(label, model), model) for id_, label, model in upgrade.before.content_types]

    # Same ids, nothing removed; after them only the content types of the models added since.
    assert upgrade.after.content_types[:len(expected)] == expected
    assert {(label, model) for _, label, model in upgrade.after.content_types[len(expected):]} == ADDED_MODELS
    labels = [(label, model) for _, label, model in upgrade.after.content_types]
    for model, label in MOVED.items():
        assert labels.count((label, model)) == 1, (label, model)
        assert ("chat", model) not in labels


def test_permissions_and_grants_follow_the_moved_models(upgrade):
    before, after = upgrade.before, upgrade.after
    expected = [(id_, new_label(label, model), model, codename, name)
                for id_, label, model, codename, name in before.permissions]

    # Same ids, codenames and names under the new labels; after them only the added models' permissions.
    assert after.permissions[:len(expected)] == expected
    assert {(label, model) for _, label, model, _, _ in after.permissions[len(expected):]} == ADDED_MODELS
    for grants in ("group_grants", "user_grants"):
        old = getattr(before, grants)
        assert getattr(after, grants) == [(holder, new_label(label, model), model, codename)
                                          for holder, label, model, codename in old]
    assert ("auditors", "audit", "auditevent", "view_auditevent") in after.group_grants
    assert ("auditors", "moderation", "moderationrule", "change_moderationrule") in after.group_grants
    assert ("alice", "accounts", "apikey", "change_apikey") in after.user_grants
    assert ("bob", "accounts", "apiusage", "delete_apiusage") in after.user_grants
    moved_grants = [grant for grant in after.group_grants + after.user_grants if grant[2] in MOVED]
    assert moved_grants and all(grant[1] != "chat" for grant in moved_grants)


def test_admin_log_entries_follow_the_moved_models(upgrade):
    before, after = upgrade.before, upgrade.after

    assert after.admin_log == [(id_, new_label(label, model), model, object_id, text, flag, user)
                               for id_, label, model, object_id, text, flag, user in before.admin_log]
    assert {(label, model) for _, label, model, *_ in after.admin_log} == {
        ("accounts", "apikey"), ("accounts", "apiusage"), ("audit", "auditevent"), ("audit", "auditcheckpoint"),
        ("moderation", "moderationrule"), ("chat", "conversation")}


def test_the_audit_chain_is_intact_after_the_upgrade(upgrade):
    after_checkpoint = len(upgrade.after.rows("chat_auditevent"))  # everything before it was pruned

    # The old events were chained unkeyed (chat/audit/migrations/0002_keyed_chain.py) and still verify.
    assert succeeded(upgrade.verify_chain).strip() == (
        f"OK: {after_checkpoint} events verified; {after_checkpoint} of them chained before the chain was keyed")


def test_makemigrations_finds_nothing_to_change(upgrade):
    assert "No changes detected" in succeeded(upgrade.makemigrations)


def test_the_new_code_reads_the_moved_rows_through_their_new_apps(upgrade):
    assert upgrade.probe, "the upgrade's migrate failed (see test_migrate_applies_the_new_migrations)"
    probe, before = last_json_line(succeeded(upgrade.probe)), upgrade.before

    assert Path(probe["chat"]).resolve().is_relative_to(ROOT)
    assert probe["tables"]["accounts.ApiKey"] == "chat_apikey"
    assert probe["counts"] == {table: len(before.rows(table)) for table in probe["counts"]}
    assert probe["content_types"] == {"accounts.apikey": "accounts", "accounts.apiusage": "accounts",
                                      "audit.auditcheckpoint": "audit", "audit.auditevent": "audit",
                                      "chat.attachment": "chat", "chat.conversation": "chat",
                                      "chat.message": "chat", "moderation.moderationrule": "moderation"}
    assert probe["conversation_key"] == ["laptop", "alice"]  # Conversation.api_key -> accounts.ApiKey
    assert probe["key_conversations"] == ["Through the API"]
    assert probe["alice_keys"] == ["sk-laptop"]
    assert probe["alice_usage"] == ["2026-11-28", "2026-11-29"]
    assert probe["rules"] == [["keyword", "forbidden phrase", True], ["regex", r"\bsecret-\d+\b", False]]
    assert probe["checkpoint"] == 2
    # The group's and the direct grants, checked by Django under the new labels.
    assert probe["alice_perms"] == sorted([
        "accounts.change_apikey", "accounts.view_apiusage", "audit.view_auditcheckpoint", "audit.view_auditevent",
        "chat.view_conversation", "moderation.add_moderationrule", "moderation.change_moderationrule"])
    assert probe["bob_perms"] == ["accounts.delete_apiusage", "chat.view_message"]
    # Each admin log entry still opens the object it is about.
    assert probe["entries"] == [
        {"label": label, "object": label, "same_pk": True}
        for label in ("accounts.apikey", "accounts.apiusage", "audit.auditevent", "audit.auditcheckpoint",
                      "moderation.moderationrule", "chat.conversation")
    ]
    # The chain goes on: an event the new code appends links to the old ones.
    assert probe.get("recorded") is True, "the new code's audit record() was not found or did not write"
    events = len(before.rows("chat_auditevent")) + 1
    # ... keyed, after the unkeyed ones.
    assert succeeded(upgrade.verify_chain_again).strip() == (
        f"OK: {events} events verified; {events - 1} of them chained before the chain was keyed")
