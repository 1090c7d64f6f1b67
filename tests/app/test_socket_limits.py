"""Many sockets from one user, handshakes from other origins, and a stop aimed at another conversation."""
from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlparse

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chat.conversations import socket_slots
from chat.conversations.models import Conversation, Message
from deepseek_web.asgi import application
from tests.support.sockets import open_socket, receive, receive_until, send

pytestmark = [pytest.mark.django_db(transaction=True)]
SITE = "http://127.0.0.1:8000"


@pytest.fixture(autouse=True)
def no_leases(broker):
    """Leases of sockets an earlier run left open (their user ids repeat in a new test database)."""
    stale = broker.keys("deepseek:sockets:*")
    if stale:
        broker.delete(*stale)


@pytest.fixture
def conversation(alice):
    return Conversation.objects.create(user=alice, model="deepseek-chat")


async def session_of(user) -> str:
    client = Client()
    await sync_to_async(client.force_login)(user)
    return client.cookies["sessionid"].value


async def handshake(conversation_id, session: str | None = None, origin: str | None = SITE,
                    host: str = "127.0.0.1:8000", extra: list | None = None) -> tuple[WebsocketCommunicator, bool]:
    headers = [(b"host", host.encode()), *(extra or [])]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if session is not None:
        headers.append((b"cookie", f"sessionid={session}".encode()))
    socket = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers=headers)
    connected, _ = await socket.connect(timeout=10)
    return socket, connected


def redis_clients(redis_url: str) -> int:
    """Connections to the test's Redis database (every process of this test run uses only this one)."""
    db = int(urlparse(redis_url).path.lstrip("/") or 0)
    probe = redis.Redis.from_url(redis_url)
    try:
        return sum(1 for c in probe.client_list() if int(c["db"]) == db) - 1  # less the probe itself
    finally:
        probe.close()


async def assert_answers(socket) -> None:
    await send(socket, {"type": "stop", "message_id": str(uuid.uuid4())})
    frame = await receive(socket)
    assert frame["type"] == "error" and frame["code"] == "not_found"


# ---- sockets per user and per process ------------------------------------------------------------------
async def test_the_socket_past_a_users_cap_is_closed_with_4429_and_leaks_nothing(
        conversation, alice, bob, broker, redis_url, settings):
    settings.SOCKETS_PER_USER = 20
    session = await session_of(alice)
    sockets = []
    for _ in range(20):
        socket, connected = await handshake(conversation.id, session)
        assert connected
        sockets.append(socket)
    await assert_answers(sockets[-1])
    clients_before = await asyncio.to_thread(redis_clients, redis_url)

    refused, connected = await handshake(conversation.id, session)
    assert connected  # accepted, so the browser sees the close code
    assert await refused.receive_output(timeout=5) == {"type": "websocket.close", "code": 4429}
    await refused.disconnect()

    assert await asyncio.to_thread(redis_clients, redis_url) <= clients_before
    assert broker.zcard(f"deepseek:sockets:{alice.pk}") == 20
    bob_conversation = await database_sync_to_async(Conversation.objects.create)(user=bob, model="deepseek-chat")
    bobs = await open_socket(bob, bob_conversation.id)  # other users are not affected
    await assert_answers(bobs)
    await sockets.pop().disconnect()  # a closed socket frees its place at once
    again, connected = await handshake(conversation.id, session)
    assert connected
    await assert_answers(again)
    for socket in [*sockets, again, bobs]:
        await socket.disconnect()
    assert broker.zrange(f"deepseek:sockets:{alice.pk}", 0, -1) == []


async def test_a_lease_left_by_a_dead_process_expires(conversation, alice, broker, settings):
    settings.SOCKETS_PER_USER = 1
    broker.zadd(f"deepseek:sockets:{alice.pk}", {"a-socket-of-a-killed-process": time.time() - 1})
    socket = await open_socket(alice, conversation.id)
    await assert_answers(socket)
    await socket.disconnect()


async def test_the_socket_past_the_process_cap_is_told_to_try_later(conversation, alice, broker, settings):
    settings.SOCKETS_PER_PROCESS = socket_slots._open_here + 1
    first = await open_socket(alice, conversation.id)
    second = await open_socket(alice, conversation.id)
    assert await second.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    await second.disconnect()
    await assert_answers(first)
    await first.disconnect()


async def test_two_hundred_sockets_share_a_few_redis_connections(conversation, alice, broker, redis_url, settings):
    """Measured: before the sockets shared their event loop's client, each held a connection of its own."""
    settings.SOCKETS_PER_USER = 0
    session = await session_of(alice)
    opened = await handshake(conversation.id, session)  # the channel layer's own connections, once
    await assert_answers(opened[0])
    before = await asyncio.to_thread(redis_clients, redis_url)
    sockets = []
    for _ in range(200):
        socket, connected = await handshake(conversation.id, session)
        assert connected
        sockets.append(socket)
    await assert_answers(sockets[-1])
    after = await asyncio.to_thread(redis_clients, redis_url)
    print(f"Redis connections for 200 more sockets: {before} -> {after}")
    assert after - before <= 8
    for socket in [opened[0], *sockets]:
        await socket.disconnect()


# ---- the handshake's origin --------------------------------------------------------------------------
@pytest.mark.parametrize("origin", [
    "http://127.0.0.1:9999",  # another port of the same host
    "https://127.0.0.1:8000",  # another scheme
    "http://127.0.0.1",  # the default port is another port
    "http://evil.example",
    None,  # no Origin header at all
])
async def test_a_handshake_from_another_origin_is_refused(conversation, alice, origin):
    socket, connected = await handshake(conversation.id, await session_of(alice), origin=origin)
    assert not connected


async def test_a_same_origin_handshake_is_accepted(conversation, alice):
    socket, connected = await handshake(conversation.id, await session_of(alice))
    assert connected
    await assert_answers(socket)
    await socket.disconnect()


async def test_a_host_outside_allowed_hosts_is_refused_even_from_its_own_origin(conversation, alice):
    """DNS rebinding: the attacker's name resolves to the server, so Host and Origin agree."""
    socket, connected = await handshake(conversation.id, await session_of(alice), origin="http://evil.example:8000",
                                        host="evil.example:8000")
    assert not connected


async def test_a_trusted_origin_and_a_proxys_https_are_accepted(conversation, alice, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com"]
    session = await session_of(alice)
    socket, connected = await handshake(conversation.id, session, origin="https://chat.example.com")
    assert connected
    await socket.disconnect()
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    socket, connected = await handshake(conversation.id, session, origin=SITE.replace("http:", "https:"),
                                        extra=[(b"x-forwarded-proto", b"https")])
    assert connected
    await socket.disconnect()
    socket, connected = await handshake(conversation.id, session, origin=SITE,
                                        extra=[(b"x-forwarded-proto", b"https")])
    assert not connected


# ---- stop ------------------------------------------------------------------------------------------
async def test_a_stop_of_an_answer_in_another_conversation_is_announced_there(conversation, alice, broker):
    other = await database_sync_to_async(Conversation.objects.create)(user=alice, model="deepseek-chat")
    watching_other = await open_socket(alice, other.id)
    await send(watching_other, {"type": "send", "content": "a question", "client_id": "c-1"})
    answer = (await receive_until(watching_other, "message"))[-1]
    if answer["message"]["role"] != "assistant":
        answer = await receive(watching_other)
    answer_id = answer["message"]["id"]
    here = await open_socket(alice, conversation.id)

    await send(here, {"type": "stop", "message_id": answer_id})

    done = await receive(watching_other)
    assert done["type"] == "done" and done["message_id"] == answer_id and done["finish_reason"] == "cancelled"
    assert await here.receive_nothing(timeout=0.5)  # nothing about another conversation's answer
    row = await database_sync_to_async(Message.objects.get)(id=answer_id)
    assert row.status == Message.Status.CANCELLED
    for socket in (here, watching_other):
        await socket.disconnect()
