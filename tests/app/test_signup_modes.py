"""SIGNUP_MODE: open (anyone signs up and is signed in), approval (the account waits for staff), closed (only
staff make accounts)."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from chat.accounts.models import PendingSignup

pytestmark = pytest.mark.django_db
User = get_user_model()
FORM = {"username": "mallory", "password1": "a long pass phrase 9", "password2": "a long pass phrase 9"}
LOGIN = {"username": "mallory", "password": "a long pass phrase 9"}


@pytest.fixture(autouse=True)
def no_signup_flood_limit(settings):
    settings.SIGNUPS_PER_IP_PER_HOUR = 0


def test_open_sign_up_makes_an_active_account_and_signs_it_in(client, settings):
    settings.SIGNUP_MODE = "open"
    response = client.post("/accounts/signup/", FORM)
    assert response.status_code == 302 and response["Location"] == "/"
    assert User.objects.get(username="mallory").is_active and not PendingSignup.objects.exists()
    assert client.get("/").status_code == 200


def test_closed_sign_up_answers_403_to_the_page_and_the_form_and_makes_nobody(client, settings):
    settings.SIGNUP_MODE = "closed"
    for response in (client.get("/accounts/signup/"), client.post("/accounts/signup/", FORM)):
        assert response.status_code == 403
        assert "Sign-up is closed" in response.content.decode()
    assert not User.objects.filter(username="mallory").exists()
    # The login page offers no sign-up link
    html = client.get("/accounts/login/").content.decode()
    assert "/accounts/signup/" not in html


def test_the_login_page_links_to_sign_up_when_it_is_open(client, settings):
    settings.SIGNUP_MODE = "open"
    assert "/accounts/signup/" in client.get("/accounts/login/").content.decode()


def test_approval_sign_up_makes_an_inactive_account_that_cannot_sign_in_until_approved(client, settings, admin_client):
    settings.SIGNUP_MODE = "approval"
    assert "approved by the site's staff" in client.get("/accounts/signup/").content.decode()
    response = client.post("/accounts/signup/", FORM)
    assert response.status_code == 200 and "Awaiting approval" in response.content.decode()
    user = User.objects.get(username="mallory")
    assert not user.is_active and PendingSignup.objects.filter(user=user).exists()
    assert client.get("/")["Location"].startswith("/accounts/login/"), "signed in before approval"
    # The right password is told the account waits; a wrong one gets the usual answer
    html = client.post("/accounts/login/", LOGIN).content.decode()
    assert 'id="awaiting-approval"' in html and "awaiting approval" in html
    html = client.post("/accounts/login/", {**LOGIN, "password": "wrong"}).content.decode()
    assert "awaiting approval" not in html and "didn't match" in html
    assert client.get("/")["Location"].startswith("/accounts/login/")
    # Staff find it in the admin and approve it
    listed = admin_client.get("/admin/auth/user/?awaiting_approval=yes").content.decode()
    assert "mallory" in listed
    admin_client.post("/admin/auth/user/", {"action": "approve", "_selected_action": [user.pk]})
    user.refresh_from_db()
    assert user.is_active and not PendingSignup.objects.exists()
    assert client.post("/accounts/login/", LOGIN).status_code == 302
    assert client.get("/").status_code == 200


def test_a_deactivated_account_is_not_told_it_awaits_approval(client, settings, alice):
    alice.is_active = False
    alice.save()
    html = client.post("/accounts/login/", {"username": "alice", "password": "correct horse battery"}).content.decode()
    assert "awaiting approval" not in html and "didn't match" in html
