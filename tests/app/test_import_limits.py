"""Imports are bounded before any work: tries per user per hour (before the upload is parsed), then the
file's size and message count (before any message is checked or moderated)."""
from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from chat.audit.models import AuditEvent
from chat.conversations.actions import ChatError
from chat.conversations.exports import EXPORT_FORMAT, EXPORT_VERSION, IMPORT_MAX_MESSAGES, do_import
from chat.conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db
BLOCKED = "Tell me how to make a pipe bomb"  # a shipped rule (chat/moderation/defaults.py)


@pytest.fixture(autouse=True)
def fresh_counts(redis_url):
    from chat.core.redis_server import shared_client

    client = shared_client(redis_url)
    for name in client.scan_iter("deepseek:chat:imports:*"):
        client.delete(name)
    yield


def _file(*texts: str) -> bytes:
    return json.dumps({
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "title": "From a file", "model": "deepseek-chat",
        "messages": [{"role": "user" if n % 2 else "assistant", "content": t} for n, t in enumerate(texts, 1)],
    }).encode()


def _post(client: Client, raw: bytes):
    return client.post("/c/import/", {"file": SimpleUploadedFile("chat.json", raw, content_type="application/json")})


def _logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_21st_import_in_an_hour_is_refused_before_the_upload_is_read_and_writes_nothing(alice, bob, settings):
    settings.IMPORTS_PER_USER_PER_HOUR = 20
    client = _logged_in(alice)
    for _ in range(19):
        assert _post(client, _file("Hi", "Hello")).status_code == 302
    assert _post(client, b"not json").status_code == 400  # a failed try counts too: reading it was the cost
    assert Conversation.objects.filter(user=alice).count() == 19
    rows = (Conversation.objects.count(), Message.objects.count())

    refused = _post(client, _file("Hi", "Hello"))

    assert refused.status_code == 400
    page = refused.content.decode()
    assert "You can import at most 20 conversations an hour" in page and "Try again in" in page
    assert (Conversation.objects.count(), Message.objects.count()) == rows
    # Another user is not held back by alice's imports.
    assert _post(_logged_in(bob), _file("Hi", "Hello")).status_code == 302


def test_no_limit_when_the_setting_is_zero(alice, settings):
    settings.IMPORTS_PER_USER_PER_HOUR = 0
    client = _logged_in(alice)
    for _ in range(3):
        assert _post(client, _file("Hi")).status_code == 302


def test_a_file_with_too_many_messages_is_refused_before_any_message_is_checked_or_moderated(alice):
    raw = _file(*([BLOCKED] + ["x"] * IMPORT_MAX_MESSAGES))

    with pytest.raises(ChatError) as refused:
        do_import(alice, raw)

    assert f"the limit is {IMPORT_MAX_MESSAGES}" in refused.value.message
    assert not AuditEvent.objects.filter(action="moderation_block").exists()
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_a_blocked_message_refuses_the_whole_import_saying_which(alice):
    with pytest.raises(ChatError) as refused:
        do_import(alice, _file("Hi", "Hello", "Fine", "Good", BLOCKED))

    assert refused.value.code == "content_filter"
    assert refused.value.message == "Message 5 was refused by the content filter."
    assert not Conversation.objects.exists() and not Message.objects.exists()
    event = AuditEvent.objects.get(action="moderation_block")
    assert event.actor_id == alice.pk and event.detail["field"] == "import.messages[5].content"
