"""Queueing an answer names it in its log lines and leaves nothing behind on the thread that committed;
a caller's request id is honoured only from a trusted proxy."""
from __future__ import annotations

import logging

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client, RequestFactory

from chat.audit import record as audit
from chat.audit.models import AuditEvent
from chat.conversations import actions
from chat.conversations.models import Conversation
from chat.core import log_context
from deepseek_web.asgi import application
from tests.support.sockets import _session_cookie, receive, send

pytestmark = pytest.mark.django_db(transaction=True)  # so the on-commit queueing really runs


def test_queueing_an_answer_leaves_the_committing_threads_log_context_as_it_was(alice, broker, caplog):
    chat = Conversation.objects.create(user=alice, model="deepseek-chat")
    before = dict(log_context.current())
    seen: list[dict[str, str]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(dict(log_context.current()))

    logger = logging.getLogger("chat.conversations.actions")
    recorder, level = Recorder(), logger.level
    logger.addHandler(recorder)
    logger.setLevel(logging.INFO)
    try:
        sent = actions.do_send_message(alice, chat.id, "Hello")
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)

    answer = sent.assistant_message
    assert {"conversation_id": str(chat.id), "message_id": str(answer.id), "model": "deepseek-chat"}.items() \
        <= seen[-1].items()
    assert dict(log_context.current()) == before


# ---- a caller's X-Request-ID: honoured only from a trusted proxy --------------------------------
FORGED = "forged-id-1"


@pytest.mark.parametrize("proxies", [0, 1])
def test_a_client_chosen_request_id_is_replaced_unless_a_trusted_proxy_passed_it(alice, settings, proxies):
    """The id names a request in the logs and the audit: a client that picks it can make its requests
    look like someone else's. Only a proxy the site trusts (AUDIT_TRUSTED_PROXY_COUNT) may set it."""
    settings.AUDIT_TRUSTED_PROXY_COUNT = proxies
    client = Client()
    client.force_login(alice)
    before = AuditEvent.objects.filter(request_id=FORGED).count()
    response = client.get("/c/00000000-0000-0000-0000-000000000000/", HTTP_X_REQUEST_ID=FORGED)
    event = AuditEvent.objects.filter(action="http_request").latest("id")
    assert response.status_code == 404
    if proxies:
        assert response.headers["X-Request-ID"] == event.request_id == FORGED
    else:
        assert response.headers["X-Request-ID"] == event.request_id != FORGED
        assert AuditEvent.objects.filter(request_id=FORGED).count() == before == 0
    # An event recorded from a bare request (no middleware ran) follows the same rule.
    bare = RequestFactory().get("/", HTTP_X_REQUEST_ID=FORGED)
    assert (audit.record("http_request", request=bare).request_id == FORGED) is bool(proxies)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("proxies", [0, 1])
async def test_a_sockets_handshake_request_id_is_honoured_only_from_a_trusted_proxy(alice, settings, proxies):
    settings.AUDIT_TRUSTED_PROXY_COUNT = proxies
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, model="deepseek-chat")
    cookie = await sync_to_async(_session_cookie)(alice)
    seen: list[str | None] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(log_context.request_id())

    logger = logging.getLogger("chat.conversations.consumers")
    recorder, level = Recorder(), logger.level
    logger.addHandler(recorder)
    logger.setLevel(logging.DEBUG)
    socket = WebsocketCommunicator(application, f"/ws/chat/{conversation.id}/", headers=[
        (b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000"),
        (b"cookie", f"sessionid={cookie}".encode()), (b"x-request-id", FORGED.encode())])
    try:
        assert (await socket.connect(timeout=5))[0]
        await send(socket, {"type": "stop", "message_id": "not-a-uuid"})
        assert (await receive(socket))["type"] == "error"
        await socket.disconnect()
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)
    assert seen and all(seen)
    assert all(value.startswith(f"{FORGED}.") for value in seen) is bool(proxies)
    assert any(FORGED in value for value in seen) is bool(proxies)
