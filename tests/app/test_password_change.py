"""A password change ends the user's other sessions (not this one, nor other users'), and offers to revoke
the API keys, which it leaves working."""
from __future__ import annotations

import pytest
from django.contrib.sessions.models import Session
from django.test import Client

from chat.accounts import api_keys
from chat.accounts.models import ApiKey

pytestmark = pytest.mark.django_db
OLD, NEW = "correct horse battery", "a brand new pass phrase 7"


def signed_in(username: str, password: str = OLD) -> Client:
    client = Client()
    assert client.post("/accounts/login/", {"username": username, "password": password}).status_code == 302
    return client


def test_it_signs_out_the_other_sessions_and_keeps_this_one(alice, bob):
    here, elsewhere, bobs = signed_in("alice"), signed_in("alice"), signed_in("bob")
    other_key = elsewhere.session.session_key
    response = here.post("/accounts/password_change/",
                         {"old_password": OLD, "new_password1": NEW, "new_password2": NEW})
    assert response.status_code == 302 and response["Location"] == "/accounts/password_change/done/"
    # The other session's row is gone, and its next request is sent to sign in
    assert not Session.objects.filter(session_key=other_key).exists()
    assert elsewhere.get("/")["Location"].startswith("/accounts/login/")
    # This one goes on; bob's is untouched
    assert here.get("/").status_code == 200
    assert bobs.get("/").status_code == 200
    assert Session.objects.count() == 2


def test_a_wrong_old_password_changes_nothing_and_ends_no_session(alice):
    here, elsewhere = signed_in("alice"), signed_in("alice")
    response = here.post("/accounts/password_change/",
                         {"old_password": "wrong", "new_password1": NEW, "new_password2": NEW})
    assert response.status_code == 200
    assert Session.objects.count() == 2 and elsewhere.get("/").status_code == 200
    alice.refresh_from_db()
    assert alice.check_password(OLD)


def test_the_done_page_offers_to_revoke_the_live_keys(alice, bob):
    row, key = api_keys.do_create_key(alice, "laptop")
    bobs_key = api_keys.do_create_key(bob, "bob's")[1]
    here = signed_in("alice")
    here.post("/accounts/password_change/", {"old_password": OLD, "new_password1": NEW, "new_password2": NEW})
    html = here.get("/accounts/password_change/done/").content.decode()
    assert f"{row.prefix}…" in html and 'id="revoke-all-keys"' in html
    assert api_keys.authenticate(key) == alice  # a new password does not touch the keys by itself
    response = here.post("/account/api-keys/revoke-all/")
    assert response.status_code == 302 and response["Location"] == "/account/api-keys/"
    assert api_keys.authenticate(key) is None and not ApiKey.objects.filter(user=alice, revoked_at=None).exists()
    assert api_keys.authenticate(bobs_key) == bob  # only alice's own keys
