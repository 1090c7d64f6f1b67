"""A database outage: pages and the API answer 503 with a clear message, sockets say `unavailable` and stay
open, and nothing is half-written. The outage is simulated in-process: every query fails at the driver."""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import OperationalError, connections
from django.db.backends.utils import CursorWrapper
from django.test import Client

from chat.accounts import api_keys
from chat.conversations.models import Conversation, Message
from deepseek_web.asgi import application
from tests.support.conformance import assert_conforms
from tests.support.sockets import open_socket, receive, send

pytestmark = pytest.mark.django_db(transaction=True)
# A first send loads the tokenizer (to check the prompt fits): seconds on a busy machine.
SLOW = 60
QUEUE = "model.deepseek-chat"
HELLO = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "Hello"}]}


# ---- the outage ----------------------------------------------------------------------------------
def _refuse(self, name=None):
    # What the driver raises while PostgreSQL restarts or the network is gone; Django wraps it.
    raise self.Database.OperationalError("could not connect to server: Connection refused (test outage)")


@contextmanager
def database_down() -> Iterator[None]:
    """Every query in every thread fails until the block ends; then the same connections work again."""
    with mock.patch.object(type(connections["default"]), "create_cursor", _refuse):
        yield


@contextmanager
def database_fails_after_first_message_insert() -> Iterator[None]:
    """The database goes away in the middle of a send: the question's row is inserted, then nothing works."""
    original = CursorWrapper.execute
    down = False

    def execute(self, sql, params=None):
        if down:
            raise OperationalError("server closed the connection unexpectedly (test outage)")
        result = original(self, sql, params)
        if sql.startswith('INSERT INTO "chat_message"'):
            go_down()
        return result

    def go_down():
        nonlocal down
        down = True

    with mock.patch.object(CursorWrapper, "execute", execute):
        yield


# ---- fixtures --------------------------------------------------------------------------------------
@pytest.fixture
def conversation(alice):
    return Conversation.objects.create(user=alice, model="deepseek-chat")


@pytest.fixture
def session_cookie(alice) -> str:
    client = Client()
    client.force_login(alice)
    return client.cookies["sessionid"].value


@pytest.fixture
def asgi():
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://127.0.0.1:8000")


def outage_lines(caplog) -> tuple[list[logging.LogRecord], list[logging.LogRecord]]:
    """The outage's warnings, and any 500 the request machinery logged (with its traceback)."""
    warnings = [r for r in caplog.records if r.name == "chat.core.outage" and r.levelno == logging.WARNING]
    errors = [r for r in caplog.records if r.name == "django.request" and r.levelno >= logging.ERROR]
    return warnings, errors


def rows() -> tuple[int, list[str]]:
    return Message.objects.count(), list(Conversation.objects.values_list("title", flat=True))


# ---- pages ----------------------------------------------------------------------------------------
async def test_it_answers_a_page_with_503_and_a_clear_message_not_a_traceback(asgi, conversation, session_cookie,
                                                                             caplog):
    with database_down():
        response = await asgi.get(f"/c/{conversation.id}/", cookies={"sessionid": session_cookie})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"].startswith("text/html")
    assert "cannot reach its database" in response.text
    assert "Traceback" not in response.text and "OperationalError" not in response.text
    assert f'href="/c/{conversation.id}/"' in response.text  # "Try again" reloads the page
    warnings, errors = outage_lines(caplog)
    assert len(warnings) == 1 and errors == []
    assert warnings[0].exc_info is None and "Connection refused" in warnings[0].getMessage()


async def test_it_answers_the_outage_page_in_the_users_language(asgi, session_cookie):
    with database_down():
        response = await asgi.get("/", cookies={"sessionid": session_cookie, "django_language": "zh-hans"})
    assert response.status_code == 503
    assert '<html lang="zh-hans"' in response.text
    assert "暂时无法使用" in response.text


async def test_it_answers_the_sign_in_form_with_503(asgi, alice):
    page = await asgi.get("/accounts/login/")
    token = page.cookies["csrftoken"]
    with database_down():
        response = await asgi.post("/accounts/login/", cookies={"csrftoken": token}, data={
            "csrfmiddlewaretoken": token, "username": "alice", "password": "correct horse battery"})
    assert response.status_code == 503
    assert "sessionid" not in response.cookies


def test_it_answers_503_when_a_middleware_meets_the_outage_before_the_view(alice, conversation, caplog):
    # The moderation middleware reads the user in process_view: Django turns that error into a response
    # at the middleware's layer (handler500), which answers the outage page too, without a 500's traceback.
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    with database_down():
        response = client.post(f"/c/{conversation.id}/settings/", {"system_prompt": "Be brief."})
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert b"cannot reach its database" in response.content
    warnings, errors = outage_lines(caplog)
    assert len(warnings) == 1 and errors == []
    conversation.refresh_from_db()
    assert conversation.system_prompt == ""


# ---- the API --------------------------------------------------------------------------------------
async def test_it_answers_the_api_with_a_json_503(asgi, alice):
    key = await sync_to_async(lambda: api_keys.do_create_key(alice, "tests")[1])()
    with database_down():
        # Checking the key is the first query: it is still a 503 for the client to retry, not a 401 or 500.
        completions = await asgi.post("/v1/chat/completions", json=HELLO, headers={"Authorization": f"Bearer {key}"})
        listed = await asgi.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        bare = await asgi.post("/chat/completions", json=HELLO, headers={"Authorization": f"Bearer {key}"})
    for response in (completions, listed, bare):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["retry-after"] == "5"
        body = response.json()
        assert_conforms("ErrorResponse", body)
        assert body["error"]["code"] == "database_unavailable"
        assert body["error"]["type"] == "service_unavailable_error"
    assert await sync_to_async(Message.objects.count)() == 0


async def test_it_answers_the_api_normally_once_the_database_is_back(asgi, alice):
    key = await sync_to_async(lambda: api_keys.do_create_key(alice, "tests")[1])()
    with database_down():
        assert (await asgi.get("/v1/models", headers={"Authorization": f"Bearer {key}"})).status_code == 503
    response = await asgi.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200 and response.json()["object"] == "list"


# ---- the socket -----------------------------------------------------------------------------------
async def connected(socket):
    """The consumer accepts first and checks ownership after: one round trip makes sure that check
    is over before a test takes the database down."""
    await send(socket, {"type": "ping?"})
    assert (await receive(socket, SLOW))["code"] == "unknown_type"
    return socket


async def test_a_send_during_the_outage_gets_unavailable_and_the_socket_stays_open(conversation, alice, broker,
                                                                                  caplog):
    socket = await connected(await open_socket(alice, conversation.id))
    with database_down():
        await send(socket, {"type": "send", "content": "Hello there", "client_id": "c-1"})
        frame = await receive(socket, SLOW)
        assert frame["type"] == "error" and frame["code"] == "unavailable"
        assert "database is unavailable" in frame["message"]
    assert await database_sync_to_async(Message.objects.count)() == 0 and broker.llen(QUEUE) == 0
    # Once it is back, the same socket sends as usual.
    await send(socket, {"type": "send", "content": "Hello there", "client_id": "c-2"})
    question, answer = await receive(socket, SLOW), await receive(socket, SLOW)
    assert question["type"] == answer["type"] == "message"
    assert question["message"]["client_id"] == "c-2" and answer["message"]["status"] == "pending"
    assert broker.llen(QUEUE) == 1
    warnings, _ = outage_lines(caplog)
    consumer = "chat.conversations.consumers"
    assert len(warnings) == 1 and not [r for r in caplog.records if r.name == consumer and r.exc_info]
    await socket.disconnect()


async def test_the_unavailable_frame_is_translated(conversation, alice, broker):
    socket = await connected(await open_socket(alice, conversation.id, language="zh-hans"))
    with database_down():
        await send(socket, {"type": "stop", "message_id": str(uuid.uuid4())})
        frame = await receive(socket, SLOW)
    assert frame["code"] == "unavailable" and "数据库" in frame["message"], frame
    await socket.disconnect()


async def test_an_outage_in_the_middle_of_a_send_writes_neither_message(conversation, alice, broker):
    socket = await open_socket(alice, conversation.id)
    with database_fails_after_first_message_insert():
        await send(socket, {"type": "send", "content": "Hello there"})
        frame = await receive(socket, SLOW)
    assert frame["type"] == "error" and frame["code"] == "unavailable"
    count, titles = await database_sync_to_async(rows)()
    assert count == 0 and titles == [""], "the question was kept without its answer"
    assert broker.llen(QUEUE) == 0
    await send(socket, {"type": "send", "content": "Hello there"})
    assert (await receive(socket, SLOW))["message"]["content"] == "Hello there"
    await socket.disconnect()


async def test_a_socket_opened_during_the_outage_is_closed_with_4503(conversation, session_cookie, caplog):
    headers = [(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000"),
               (b"cookie", f"sessionid={session_cookie}".encode())]
    with database_down():
        # The session and user are read before the consumer runs (channels' AuthMiddleware).
        socket = WebsocketCommunicator(application, f"/ws/chat/{conversation.id}/", headers=headers)
        connected, _ = await socket.connect(timeout=5)
        assert connected
        assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    warnings, _ = outage_lines(caplog)
    assert len(warnings) == 1


async def test_an_outage_while_the_consumer_checks_the_owner_closes_with_4503(conversation, alice):
    down = OperationalError("the server went away")
    with mock.patch("chat.conversations.actions.get_conversation", side_effect=down):
        socket = await open_socket(alice, conversation.id)
        assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}

