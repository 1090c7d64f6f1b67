"""API keys: shown once, stored hashed, prefix visible, revoked or deactivated keys stop at once."""
from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from chat.accounts import api_keys
from chat.accounts.models import ApiKey
from chat.audit.models import AuditEvent
from chat.core.errors import ChatError

pytestmark = pytest.mark.django_db


def test_a_new_key_is_returned_once_and_only_its_hash_is_stored(alice):
    row, key = api_keys.do_create_key(alice, "laptop")
    assert key.startswith("sk-") and len(key) > 40
    stored = ApiKey.objects.get(id=row.id)
    assert stored.key_hash == api_keys.key_hash(key) and key not in str(stored.__dict__)
    assert stored.prefix == key[:10] and stored.name == "laptop"
    event = AuditEvent.objects.get(action="api_key_created")
    assert event.actor_id == alice.id and key not in str(event.detail)


def test_a_live_key_authenticates_its_owner_and_records_its_use(alice):
    row, key = api_keys.do_create_key(alice)
    assert api_keys.authenticate(key) == alice
    assert ApiKey.objects.get(id=row.id).last_used_at is not None
    for wrong in (key + "x", key[:-1], "sk-nothing", "", None, 42, "Bearer " + key):
        assert api_keys.authenticate(wrong) is None


def test_a_revoked_key_and_a_deactivated_users_key_stop_working_at_once(alice, bob):
    row, key = api_keys.do_create_key(alice)
    other, other_key = api_keys.do_create_key(alice)
    assert api_keys.authenticate(key) == alice
    assert api_keys.do_revoke_key(alice, row.id).revoked_at is not None
    assert api_keys.authenticate(key) is None
    assert AuditEvent.objects.filter(action="api_key_revoked").count() == 1
    assert api_keys.authenticate(other_key) == alice
    alice.is_active = False
    alice.save()
    assert api_keys.authenticate(other_key) is None


def test_another_users_key_cannot_be_revoked(alice, bob):
    row, key = api_keys.do_create_key(alice)
    for key_id in (row.id, "not-an-id"):
        with pytest.raises(ChatError) as refused:
            api_keys.do_revoke_key(bob, key_id)
        assert refused.value.code == "not_found"
    assert ApiKey.objects.get(id=row.id).revoked_at is None and api_keys.authenticate(key) == alice


def test_a_bad_name_is_refused_and_no_key_is_made(alice):
    for name in ("x" * 101, "a\x00b", 5):
        with pytest.raises(ChatError):
            api_keys.do_create_key(alice, name)
    assert not ApiKey.objects.exists()


def test_the_command_prints_the_key_alone_on_its_last_line(alice):
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", "alice", "--name", "ci", stdout=out, stderr=err)
    key = out.getvalue().strip().splitlines()[-1]
    assert api_keys.authenticate(key) == alice and ApiKey.objects.get().name == "ci"
    with pytest.raises(CommandError):
        call_command("create_api_key", "nobody", stdout=io.StringIO(), stderr=io.StringIO())
