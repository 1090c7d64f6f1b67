"""An open chat socket follows the session it was opened with: a logout, a password change elsewhere or a
deactivation closes it (4401) and it takes no more commands; the session that changed its own password keeps
its sockets."""
from __future__ import annotations

import uuid

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session
from django.test import AsyncClient, Client

from chat.accounts import session_epochs
from chat.conversations.models import Conversation, Message
from deepseek_web.asgi import application
from tests.support.sockets import open_socket, receive, send

pytestmark = [pytest.mark.django_db(transaction=True)]
PASSWORD = "correct horse battery"
CLOSED_4401 = {"type": "websocket.close", "code": 4401}


@pytest.fixture
def conversation(alice):
    return Conversation.objects.create(user=alice, model="deepseek-chat")


async def signed_in(user) -> Client:
    """A browser's session: the same cookie for its pages and its sockets."""
    client = Client()
    await sync_to_async(client.force_login)(user)
    return client


async def socket_of(client: Client, conversation_id) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000"),
               (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]
    socket = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers=headers)
    connected, _ = await socket.connect(timeout=5)
    assert connected
    return socket


async def messages_written() -> int:
    return await database_sync_to_async(Message.objects.count)()


async def assert_still_open(socket) -> None:
    await send(socket, {"type": "stop", "message_id": str(uuid.uuid4())})
    frame = await receive(socket)
    assert frame["type"] == "error" and frame["code"] == "not_found"


async def test_a_logout_closes_that_sessions_socket_and_it_takes_no_more_commands(conversation, alice, broker):
    browser = await signed_in(alice)
    socket = await socket_of(browser, conversation.id)
    other_session = await open_socket(alice, conversation.id)  # another browser of the same user
    before = await messages_written()

    response = await sync_to_async(browser.post)("/accounts/logout/")
    assert response.status_code == 302

    assert await socket.receive_output(timeout=5) == CLOSED_4401
    await send(socket, {"type": "send", "content": "still here?", "client_id": "late"})
    assert await socket.receive_nothing(timeout=0.5)
    assert await messages_written() == before and broker.llen("model.deepseek-chat") == 0
    await assert_still_open(other_session)  # the other session did not log out
    await other_session.disconnect()


async def test_a_command_after_a_lost_notice_is_refused_by_the_per_command_check(
        conversation, alice, broker, redis_url):
    """The notice to close went missing (Redis pub/sub delivers at most once): the session was deleted and
    the epoch bumped, and the next command finds it."""
    browser = await signed_in(alice)
    socket = await socket_of(browser, conversation.id)
    await assert_still_open(socket)
    before = await messages_written()
    key = browser.cookies["sessionid"].value
    await database_sync_to_async(lambda: Session.objects.filter(session_key=key).delete())()
    redis.Redis.from_url(redis_url).incr(session_epochs.epoch_key(alice.pk))

    await send(socket, {"type": "send", "content": "after the logout", "client_id": "late"})

    assert await socket.receive_output(timeout=5) == CLOSED_4401
    assert await messages_written() == before and broker.llen("model.deepseek-chat") == 0


async def test_a_session_that_expired_unannounced_is_found_within_the_recheck_interval(
        conversation, alice, broker, settings):
    settings.SESSION_RECHECK_SECONDS = 0  # every command reads the session
    browser = await signed_in(alice)
    socket = await socket_of(browser, conversation.id)
    await assert_still_open(socket)
    key = browser.cookies["sessionid"].value
    await database_sync_to_async(lambda: Session.objects.filter(session_key=key).delete())()
    before = await messages_written()

    await send(socket, {"type": "send", "content": "hello", "client_id": "late"})

    assert await socket.receive_output(timeout=5) == CLOSED_4401
    assert await messages_written() == before


@pytest.mark.parametrize("served", ["sync", "async"])  # Django's test client, and the ASGI handler daphne runs
async def test_a_password_change_closes_the_other_sessions_sockets_and_keeps_its_own(
        conversation, alice, broker, served):
    if served == "sync":
        changing = await signed_in(alice)
        post = sync_to_async(changing.post)
    else:
        changing = AsyncClient()
        await changing.aforce_login(alice)
        post = changing.post
    own_socket = await socket_of(changing, conversation.id)
    elsewhere = await open_socket(alice, conversation.id)

    response = await post("/accounts/password_change/", {
        "old_password": PASSWORD, "new_password1": "a new horse battery staple", "new_password2":
        "a new horse battery staple"})
    assert response.status_code == 302

    assert await elsewhere.receive_output(timeout=5) == CLOSED_4401
    await assert_still_open(own_socket)  # its session moved to a new key, which the socket follows
    await send(own_socket, {"type": "send", "content": "still signed in", "client_id": "c-1"})
    assert (await receive(own_socket))["type"] == "message"
    await own_socket.disconnect()


async def test_a_deactivation_closes_the_users_sockets(conversation, alice, broker):
    socket = await open_socket(alice, conversation.id)
    await assert_still_open(socket)
    before = await messages_written()

    alice.is_active = False
    await database_sync_to_async(alice.save)()

    assert await socket.receive_output(timeout=5) == CLOSED_4401
    await send(socket, {"type": "send", "content": "hello", "client_id": "late"})
    assert await socket.receive_nothing(timeout=0.5)
    assert await messages_written() == before


async def test_a_sign_in_saving_last_login_does_not_disturb_open_sockets(conversation, alice, broker, redis_url):
    socket = await open_socket(alice, conversation.id)
    epoch = session_epochs.current_epoch(alice.pk)
    await open_socket(alice, conversation.id)  # a second sign-in (force_login saves last_login)
    assert session_epochs.current_epoch(alice.pk) == epoch
    await assert_still_open(socket)
    await socket.disconnect()
