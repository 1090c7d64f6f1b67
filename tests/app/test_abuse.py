"""Abuse: a sign-up flood is limited per address, and oversized bodies and frames are refused before parsing."""
from __future__ import annotations

import io
import json

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from chat.audit.models import AuditEvent
from chat.conversations.exports import IMPORT_MAX_BYTES
from chat.conversations.models import Attachment, Conversation, Message
from chat.core.redis_server import shared_client
from tests.support.sockets import open_socket, receive, send

PASSWORD = "a long pass phrase 9"
# A first send loads the tokenizer (to check the prompt fits): seconds on a busy machine.
SLOW = 60


@pytest.fixture(autouse=True)
def fresh_signup_counts(redis_url):
    client = shared_client(redis_url)
    for name in client.scan_iter("deepseek:signups:*"):
        client.delete(name)
    yield
    for name in client.scan_iter("deepseek:signups:*"):
        client.delete(name)


def sign_up(username: str, address: str = "203.0.113.7", language: str | None = None):
    client = Client(REMOTE_ADDR=address)
    if language:
        client.cookies["django_language"] = language
    return client.post("/accounts/signup/", {"username": username, "password1": PASSWORD, "password2": PASSWORD})


def users() -> list[str]:
    return sorted(get_user_model().objects.values_list("username", flat=True))


# ---- sign-up floods --------------------------------------------------------------------------------
@pytest.mark.django_db
@override_settings(SIGNUPS_PER_IP_PER_HOUR=2)
def test_it_refuses_a_third_signup_from_one_address_within_the_hour():
    assert sign_up("first").status_code == 302
    assert sign_up("second").status_code == 302
    response = sign_up("third")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 3600
    assert "Too many accounts were created from your network" in response.content.decode()
    assert users() == ["first", "second"]
    # Another address is not held back by this one's flood.
    assert sign_up("fourth", address="198.51.100.4").status_code == 302
    assert users() == ["first", "fourth", "second"]


@pytest.mark.django_db
@override_settings(SIGNUPS_PER_IP_PER_HOUR=1)
def test_it_says_so_in_the_users_language():
    assert sign_up("first").status_code == 302
    response = sign_up("second", language="zh-hans")
    assert response.status_code == 429
    assert "过去一小时内从你的网络创建的账户过多" in response.content.decode()
    assert users() == ["first"]


@pytest.mark.django_db
@override_settings(SIGNUPS_PER_IP_PER_HOUR=1)
def test_a_form_with_mistakes_does_not_count():
    response = Client(REMOTE_ADDR="203.0.113.7").post("/accounts/signup/", {
        "username": "typo", "password1": PASSWORD, "password2": "something else 9"})
    assert response.status_code == 400
    assert sign_up("careful").status_code == 302


@pytest.mark.django_db
@override_settings(SIGNUPS_PER_IP_PER_HOUR=0)
def test_zero_means_no_limit():
    for number in range(5):
        assert sign_up(f"user{number}").status_code == 302


@pytest.mark.django_db
@override_settings(SIGNUPS_PER_IP_PER_HOUR=1, AUDIT_TRUSTED_PROXY_COUNT=1)
def test_behind_a_trusted_proxy_it_counts_the_clients_address_not_the_proxys():
    def through_proxy(username: str, client_address: str):
        return Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=client_address).post(
            "/accounts/signup/", {"username": username, "password1": PASSWORD, "password2": PASSWORD})

    assert through_proxy("first", "203.0.113.7").status_code == 302
    assert through_proxy("second", "198.51.100.4").status_code == 302
    assert through_proxy("third", "203.0.113.7").status_code == 429


# ---- oversized bodies ---------------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_refuses_a_50_mb_form_post_without_parsing_it(alice):
    # Django refuses a form body over DATA_UPLOAD_MAX_MEMORY_SIZE by its Content-Length, before parsing.
    body = b"username=alice&password=" + b"x" * (50 * 1024 * 1024)
    client = Client()
    response = client.generic("POST", "/accounts/login/", body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_it_refuses_an_import_file_over_the_cap_and_writes_nothing(alice):
    client = Client()
    client.force_login(alice)
    big = io.BytesIO(b'{"format": "deepseek-web.conversation", "padding": "' + b"x" * IMPORT_MAX_BYTES + b'"}')
    big.name = "chat.json"
    response = client.post("/c/import/", {"file": big})
    assert response.status_code == 400
    assert "too large" in response.content.decode()
    assert Conversation.objects.count() == 0 and Message.objects.count() == 0


@pytest.mark.django_db
@override_settings(ATTACHMENT_MAX_BYTES=64 * 1024)
def test_it_refuses_an_upload_over_the_cap_and_stores_nothing(alice):
    client = Client()
    client.force_login(alice)
    big = io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * (65 * 1024))
    big.name = "big.png"
    response = client.post("/attachments/", {"file": big})
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_large"
    assert Attachment.objects.count() == 0


# Declared far past the cap, with a body that could not even be read that far: a parser reading it (the
# CSRF check's, or the view's) would fail; the refusal must come from the Content-Length alone.
LYING_LENGTH = {"CONTENT_LENGTH": str(900 * 1024 * 1024)}
MULTIPART = "multipart/form-data; boundary=b"


@pytest.mark.django_db
@override_settings(ATTACHMENT_MAX_BYTES=64 * 1024)
def test_an_upload_declared_past_the_cap_is_refused_unread_with_json_and_audited(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.generic("POST", "/attachments/", b"--b\r\n", content_type=MULTIPART, **LYING_LENGTH)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large" and "limit is 65536" in response.json()["error"]["message"]
    assert Attachment.objects.count() == 0
    assert AuditEvent.objects.filter(action="upload_rejected", verdict="too_large").count() == 1


@pytest.mark.django_db
def test_an_import_declared_past_the_cap_is_refused_unread_with_the_forms_message(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.generic("POST", "/c/import/", b"--b\r\n", content_type=MULTIPART, **LYING_LENGTH)
    assert response.status_code == 413 and "too large to import" in response.content.decode()
    assert Conversation.objects.count() == 0 and Message.objects.count() == 0


@pytest.mark.django_db
def test_an_anonymous_oversized_post_is_sent_to_sign_in_unread():
    response = Client().generic("POST", "/c/import/", b"--b\r\n", content_type=MULTIPART, **LYING_LENGTH)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.django_db
@override_settings(ATTACHMENT_MAX_BYTES=64 * 1024)
def test_a_body_just_within_the_cap_still_reaches_the_view(alice):
    # The file itself is 1 byte over: the view, not the middleware, refuses it (400, as before).
    client = Client()
    client.force_login(alice)
    big = io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * (64 * 1024 - 7))
    big.name = "big.png"
    response = client.post("/attachments/", {"file": big})
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_large"


# ---- oversized socket frames ----------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
async def test_it_refuses_a_2_mb_socket_frame_before_parsing_it_and_stays_open(alice, broker):
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, model="deepseek-chat")
    socket = await open_socket(alice, conversation.id)
    frame = json.dumps({"type": "send", "content": "x" * (2 * 1024 * 1024)})
    await send(socket, frame)
    error = await receive(socket, SLOW)
    assert error["type"] == "error" and error["code"] == "frame_too_large"
    assert await database_sync_to_async(Message.objects.count)() == 0
    # Still open: an ordinary message goes through.
    await send(socket, {"type": "send", "content": "Hello"})
    assert (await receive(socket, SLOW))["message"]["content"] == "Hello"
    await socket.disconnect()
