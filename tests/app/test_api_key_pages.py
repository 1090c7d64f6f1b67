"""The API keys page: a new key shown once, never again; revoking; limits and today's usage; Chinese."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import translation

from chat.accounts import api_keys
from chat.accounts.models import ApiKey, ApiUsage
from chat.audit.models import AuditEvent

pytestmark = pytest.mark.django_db

URL = "/account/api-keys/"
PASSWORD = "correct horse battery"  # the fixtures' (tests/conftest.py make_user)
KEY = re.compile(r"sk-[A-Za-z0-9_-]{20,}")


def revoke_url(row: ApiKey) -> str:
    return f"{URL}{row.id}/revoke/"


def test_it_sends_anonymous_visitors_to_the_login_page(client, alice):
    row, key = api_keys.do_create_key(alice, "laptop")
    assert client.get(URL)["Location"].startswith("/accounts/login/")
    assert client.post(URL, {"name": "x"}).status_code == 302
    assert client.post(revoke_url(row)).status_code == 302
    assert ApiKey.objects.count() == 1 and api_keys.authenticate(key) == alice


def test_it_shows_a_new_key_once_and_the_key_works(client, alice):
    client.force_login(alice)
    # When alice creates a key
    response = client.post(URL, {"name": "laptop", "password": PASSWORD})
    # Then the answer shows it once, with a copy button and the warning, and is not cached
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    shown = KEY.findall(html)
    assert len(set(shown)) == 1 and html.count(shown[0]) == 1
    key = shown[0]
    assert 'data-copy="new-key"' in html and "it will not be shown again" in html
    row = ApiKey.objects.get(user=alice)
    assert row.name == "laptop" and key.startswith(row.prefix)
    assert api_keys.authenticate(key) == alice
    # And a reload of the list shows its prefix, never the key
    html = client.get(URL).content.decode()
    assert key not in html and KEY.search(html) is None and "it will not be shown again" not in html
    assert f"{row.prefix}…" in html and "laptop" in html


def test_it_creates_a_key_without_a_name(client, alice):
    client.force_login(alice)
    response = client.post(URL, {"password": PASSWORD})
    assert response.status_code == 200 and ApiKey.objects.get(user=alice).name == ""
    assert "Unnamed key" in response.content.decode()


def test_it_lists_only_the_users_own_keys_by_prefix_and_never_a_key_or_hash(client, alice, bob):
    mine, my_key = api_keys.do_create_key(alice, "laptop")
    used, used_key = api_keys.do_create_key(alice, "server")
    api_keys.authenticate(used_key)
    revoked, _ = api_keys.do_create_key(alice, "old")
    api_keys.do_revoke_key(alice, revoked.id)
    theirs, their_key = api_keys.do_create_key(bob, "bobs-laptop")
    client.force_login(alice)
    response = client.get(URL)
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    html = response.content.decode()
    for row in (mine, used, revoked):
        assert f"{row.prefix}…" in html and row.key_hash not in html
    for key in (my_key, used_key, their_key):
        assert key not in html
    assert theirs.prefix not in html and "bobs-laptop" not in html
    # last used / never, active / revoked on <date>, and a revoke button only for live keys
    item = html.split(f'id="key-{mine.id}"')[1].split("</li>")[0]
    assert "never" in item and "active" in item and revoke_url(mine) in item
    item = html.split(f'id="key-{used.id}"')[1].split("</li>")[0]
    assert "never" not in item
    item = html.split(f'id="key-{revoked.id}"')[1].split("</li>")[0]
    assert "revoked on" in item and revoke_url(revoked) not in item


def test_it_shows_a_bad_name_and_creates_nothing(client, alice):
    client.force_login(alice)
    response = client.post(URL, {"name": "x" * 101, "password": PASSWORD})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="key-name-error"' in html and "at most 100 characters" in html
    assert 'aria-invalid="true"' in html and KEY.search(html) is None
    assert not ApiKey.objects.exists()


def test_it_revokes_a_key_and_it_stops_working(client, alice):
    row, key = api_keys.do_create_key(alice, "laptop")
    client.force_login(alice)
    response = client.post(revoke_url(row))
    assert response.status_code == 302 and response["Location"] == URL
    assert ApiKey.objects.get(id=row.id).revoked_at is not None
    assert api_keys.authenticate(key) is None
    html = client.get(URL).content.decode()
    assert 'id="flash"' in html and f"{row.prefix}… was revoked" in html
    # Revoking again is harmless
    assert client.post(revoke_url(row)).status_code == 302


def test_it_answers_404_when_bob_revokes_alices_key(client, alice, bob):
    row, key = api_keys.do_create_key(alice, "laptop")
    client.force_login(bob)
    assert client.post(revoke_url(row)).status_code == 404
    assert client.post(f"{URL}00000000-0000-0000-0000-000000000000/revoke/").status_code == 404
    assert ApiKey.objects.get(id=row.id).revoked_at is None
    assert api_keys.authenticate(key) == alice


def test_it_does_not_revoke_on_a_get(client, alice):
    row, key = api_keys.do_create_key(alice, "laptop")
    client.force_login(alice)
    assert client.get(revoke_url(row)).status_code == 405
    assert ApiKey.objects.get(id=row.id).revoked_at is None and api_keys.authenticate(key) == alice


def test_it_needs_the_csrf_token_to_create_or_revoke(alice):
    from django.test import Client

    row, key = api_keys.do_create_key(alice, "laptop")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(URL, {"name": "x"}).status_code == 403
    assert client.post(revoke_url(row)).status_code == 403
    assert ApiKey.objects.count() == 1 and api_keys.authenticate(key) == alice


def test_it_shows_todays_usage_against_the_limits(client, alice, bob, settings):
    settings.API_TOKENS_PER_DAY = 50_000
    settings.API_CONCURRENT_REQUESTS = 3
    settings.API_REQUESTS_PER_MINUTE = 25
    today = dt.datetime.now(dt.UTC).date()
    ApiUsage.objects.create(user=alice, day=today, requests=17, prompt_tokens=1200, completion_tokens=34)
    ApiUsage.objects.create(user=alice, day=today - dt.timedelta(days=1), requests=999, prompt_tokens=7)
    ApiUsage.objects.create(user=bob, day=today, requests=555, prompt_tokens=8888)
    client.force_login(alice)
    html = client.get(URL).content.decode()
    assert re.search(r'id="usage-requests">17<', html)
    tokens = html.split('id="usage-tokens">')[1].split("</dd>")[0]
    assert "1,234 of 50,000" in tokens and "prompt 1,200 + completion 34" in tokens
    assert "0 of 3 at a time" in html.split('id="usage-in-flight">')[1].split("</dd>")[0]
    assert re.search(r'id="limit-rpm">25<', html)
    assert 'max="50000" value="1234"' in html
    assert "999" not in html and "555" not in html and "8888" not in html


def test_it_says_no_limit_when_a_limit_is_zero(client, alice, settings):
    settings.API_TOKENS_PER_DAY = 0
    settings.API_CONCURRENT_REQUESTS = 0
    settings.API_REQUESTS_PER_MINUTE = 0
    client.force_login(alice)
    html = client.get(URL).content.decode()
    assert "0 (no limit)" in html.split('id="usage-tokens">')[1].split("</dd>")[0]
    assert "0 (no limit)" in html.split('id="usage-in-flight">')[1].split("</dd>")[0]
    assert 'id="limit-rpm">no limit<' in html
    assert 'id="token-quota"' not in html


def test_it_shows_how_to_call_the_api_with_the_first_model(client, alice):
    from chat.core.served_models import default_model

    client.force_login(alice)
    html = client.get(URL).content.decode()
    model = default_model().name
    assert 'id="base-url" class="base-url">http://testserver/v1<' in html
    curl = html.split('id="curl-example">')[1].split("</pre>")[0]
    assert "http://testserver/v1/chat/completions" in curl and f'"model": "{model}"' in curl
    assert "Authorization: Bearer $DEEPSEEK_API_KEY" in curl and '"stream": true' in curl
    python = html.split('id="python-example">')[1].split("</pre>")[0]
    assert 'OpenAI(base_url="http://testserver/v1", api_key=' in python
    assert "client.chat.completions.create(" in python and f'model="{model}"' in python and "stream=True" in python


def test_it_is_linked_from_the_chat_sidebar(client, alice):
    client.force_login(alice)
    assert f'href="{URL}" id="api-keys-link"' in client.get("/").content.decode()


def test_it_has_no_inline_script_or_style(client, alice):
    client.force_login(alice)
    response = client.post(URL, {"name": "laptop", "password": PASSWORD})
    policy = response["Content-Security-Policy"]
    assert "unsafe-inline" not in policy and "script-src 'self'" in policy
    html = response.content.decode()
    for tag in html.split("<script")[1:]:
        head = tag.split(">")[0]
        assert "src=" in head or 'type="application/json"' in head, head
    assert " style=" not in html and "<style" not in html
    assert re.search(r"<[^>]+\son[a-z]+=", html) is None  # no inline event handlers either


@pytest.fixture
def back_to_english():
    """The locale middleware leaves the last request's language active in this thread: reset it."""
    yield
    translation.deactivate()


def test_it_renders_in_simplified_chinese(client, alice, settings, back_to_english):
    settings.API_REQUESTS_PER_MINUTE = 0
    api_keys.do_create_key(alice, "laptop")
    client.force_login(alice)
    client.cookies["django_language"] = "zh-hans"
    response = client.post(URL, {"name": "x" * 101, "password": PASSWORD})
    html = response.content.decode()
    assert 'lang="zh-hans"' in html and "密钥名称最多 100 个字符" in html
    html = client.get(URL).content.decode()
    assert 'lang="zh-hans"' in html
    for english in ("API keys</h1>", "Create a key", "Your keys", "Last used", "never", "Revoke<",
                    "Requests today", "no limit", "How to use a key"):
        assert english not in html, english
    assert "API 密钥</h1>" in html and "从未使用" in html and "不限" in html
    html = client.post(URL, {"name": "phone", "password": PASSWORD}).content.decode()
    assert "不会再次显示" in html


def test_it_needs_the_password_again_and_a_wrong_one_makes_no_key(client, alice):
    client.force_login(alice)
    for password, error in (("", "Enter your password"), ("wrong horse battery", "not your password")):
        response = client.post(URL, {"name": "stolen session", "password": password})
        assert response.status_code == 400
        html = response.content.decode()
        assert 'id="key-password-error"' in html and error in html and KEY.search(html) is None
    assert not ApiKey.objects.exists()
    assert AuditEvent.objects.filter(action="login_failed").count() == 1  # the wrong one: a failed sign-in


def test_wrong_passwords_lock_key_making_out_as_they_lock_sign_in(client, alice, settings):
    client.force_login(alice)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post(URL, {"password": "guess"}).status_code == 400
    assert client.post(URL, {"password": "guess"}).status_code == 429  # the last failure the limit allows
    # Locked out now: even the right password makes no key, and sign-in with it is refused too
    response = client.post(URL, {"password": PASSWORD})
    assert response.status_code == 429 and "Too many wrong passwords" in response.content.decode()
    assert not ApiKey.objects.exists()
    client.logout()
    assert client.post("/accounts/login/", {"username": "alice", "password": PASSWORD}).status_code == 429
