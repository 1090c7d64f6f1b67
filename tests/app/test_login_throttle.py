"""Sign-in throttling: repeated wrong passwords lock one username + address out for the cool-off."""
import datetime

import pytest
from asgiref.sync import sync_to_async
from axes.models import AccessAttempt
from django.conf import settings
from django.test import AsyncClient

from chat.audit.chain import verify_chain
from chat.audit.models import AuditEvent

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
PASSWORD = "correct horse battery"
WRONG = "not-the-password-7731"


def sign_in(client, username, password, **extra):
    return client.post(LOGIN, {"username": username, "password": password}, **extra)


def fail_up_to_the_limit(client, username, **extra):
    """The wrong password AXES_FAILURE_LIMIT times; every try but the last answers the normal form."""
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = sign_in(client, username, WRONG, **extra)
        assert response.status_code == 200
        assert b'class="form-error"' in response.content
    sign_in(client, username, WRONG, **extra)


def is_signed_in(client):
    return "_auth_user_id" in client.session


def test_it_locks_out_after_the_limit_even_with_the_right_password(client, alice):
    fail_up_to_the_limit(client, "alice")

    response = sign_in(client, "alice", PASSWORD)

    assert response.status_code == 429
    assert "Too many failed sign-in attempts. Try again in 15 minutes." in response.content.decode()
    assert 14 * 60 < int(response["Retry-After"]) <= 15 * 60
    assert b'name="password"' in response.content  # the login page itself, not axes' bare text
    assert b'value="alice"' in response.content
    assert not is_signed_in(client)


def test_it_says_so_in_chinese(client, alice):
    client.cookies["django_language"] = "zh-hans"
    fail_up_to_the_limit(client, "alice")

    response = sign_in(client, "alice", PASSWORD)

    assert response.status_code == 429
    assert "登录失败次数过多。请在 15 分钟后重试。" in response.content.decode()


def test_it_audits_the_lockout_once_without_the_password(client, alice):
    fail_up_to_the_limit(client, "alice")
    sign_in(client, "alice", PASSWORD)
    sign_in(client, "alice", WRONG)

    locked = list(AuditEvent.objects.filter(action="login_locked"))
    assert len(locked) == 1
    event = locked[0]
    assert event.verdict == "refused"
    assert event.ip == "127.0.0.1"
    assert event.detail == {"username": "alice", "failures": settings.AXES_FAILURE_LIMIT, "cooloff_minutes": 15}
    row = str(AuditEvent.objects.filter(pk=event.pk).values().get())
    assert WRONG not in row and PASSWORD not in row
    # Every refused try is still a failed login, as before throttling.
    assert AuditEvent.objects.filter(action="login_failed").count() == settings.AXES_FAILURE_LIMIT + 2
    assert verify_chain().ok


def test_it_does_not_lock_out_another_user_or_another_address(client, alice, bob, make_user):
    fail_up_to_the_limit(client, "alice")
    assert sign_in(client, "alice", PASSWORD).status_code == 429

    assert sign_in(client, "bob", PASSWORD).status_code == 302
    client.logout()
    assert sign_in(client, "alice", PASSWORD, REMOTE_ADDR="10.1.2.3").status_code == 302


def test_it_resets_the_count_after_a_successful_sign_in(client, alice):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, "alice", WRONG).status_code == 200
    assert sign_in(client, "alice", PASSWORD).status_code == 302
    client.logout()

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, "alice", WRONG).status_code == 200
    assert sign_in(client, "alice", PASSWORD).status_code == 302
    assert not AccessAttempt.objects.filter(username="alice").exists()


def test_it_unlocks_when_the_cool_off_is_over(client, alice):
    fail_up_to_the_limit(client, "alice")
    assert sign_in(client, "alice", PASSWORD).status_code == 429

    aged = settings.AXES_COOLOFF_TIME + datetime.timedelta(seconds=1)
    for attempt in AccessAttempt.objects.filter(username="alice"):
        attempt.attempt_time -= aged
        attempt.save()

    assert sign_in(client, "alice", PASSWORD).status_code == 302
    assert is_signed_in(client)


def test_it_refused_tries_do_not_extend_the_lockout(client, alice):
    fail_up_to_the_limit(client, "alice")
    first = AccessAttempt.objects.get(username="alice")

    for _ in range(3):
        assert sign_in(client, "alice", WRONG).status_code == 429

    again = AccessAttempt.objects.get(username="alice")
    assert (again.attempt_time, again.failures_since_start) == (first.attempt_time, first.failures_since_start)


def test_it_counts_the_address_the_audit_log_records(client, alice, settings):
    # Behind one trusted proxy, the client is the proxy's X-Forwarded-For entry, not REMOTE_ADDR.
    settings.AUDIT_TRUSTED_PROXY_COUNT = 1
    fail_up_to_the_limit(client, "alice", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7")

    assert AccessAttempt.objects.get(username="alice").ip_address == "203.0.113.7"
    behind_same_proxy = sign_in(client, "alice", PASSWORD, REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.2")
    assert behind_same_proxy.status_code == 302


@pytest.mark.django_db(transaction=True)
async def test_it_locks_out_through_the_async_stack_too(alice):
    # Under daphne the middleware runs its async path, which calls the lockout page differently.
    client = AsyncClient()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        await client.post(LOGIN, {"username": "alice", "password": WRONG})

    response = await client.post(LOGIN, {"username": "alice", "password": PASSWORD})

    assert response.status_code == 429
    assert "Try again in 15 minutes." in response.content.decode()
    assert await sync_to_async(AuditEvent.objects.filter(action="login_locked").count)() == 1
