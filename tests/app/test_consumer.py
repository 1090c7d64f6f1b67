"""The chat socket over the real ASGI stack and Redis channel layer (no worker running here)."""
from __future__ import annotations

import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat.conversations.models import Conversation, Message
from deepseek_web.asgi import application
from tests.support.sockets import open_socket, receive, send

pytestmark = [pytest.mark.django_db(transaction=True)]
QUEUE = "model.deepseek-chat"


@pytest.fixture
def conversation(alice):
    return Conversation.objects.create(user=alice, model="deepseek-chat")


def count_messages() -> int:
    return Message.objects.count()


async def messages_written() -> int:
    return await database_sync_to_async(count_messages)()


async def assert_still_open(socket) -> None:
    """The socket answers a harmless command after an error (it was not closed)."""
    await send(socket, {"type": "stop", "message_id": str(uuid.uuid4())})
    frame = await receive(socket)
    assert frame["type"] == "error" and frame["code"] == "not_found"


async def test_it_closes_an_anonymous_socket_with_4401(conversation):
    socket = await open_socket(None, conversation.id)
    assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


async def test_it_closes_a_socket_to_another_users_conversation_with_4403(conversation, bob):
    socket = await open_socket(bob, conversation.id)
    assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}


async def test_a_missing_conversation_looks_the_same_as_a_foreign_one(alice):
    socket = await open_socket(alice, uuid.uuid4())
    assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}


async def test_it_refuses_a_handshake_from_a_foreign_origin(conversation, alice):
    socket = WebsocketCommunicator(application, f"/ws/chat/{conversation.id}/",
                                   headers=[(b"origin", b"http://evil.example"), (b"host", b"testserver")])
    connected, _ = await socket.connect(timeout=5)
    assert not connected


async def test_send_saves_both_messages_and_queues_the_answer(conversation, alice, broker):
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "Hello there", "attachments": [], "client_id": "c-1"})
    user_frame, answer_frame = await receive(socket), await receive(socket)
    assert user_frame["type"] == answer_frame["type"] == "message"
    assert user_frame["message"]["role"] == "user" and user_frame["message"]["client_id"] == "c-1"
    assert user_frame["message"]["content"] == "Hello there" and user_frame["message"]["status"] == "done"
    assert user_frame["message"]["conversation_title"] == "Hello there"
    assert answer_frame["message"]["role"] == "assistant" and answer_frame["message"]["status"] == "pending"
    rows = await database_sync_to_async(lambda: list(Message.objects.order_by("position").values_list(
        "role", "content", "status", "position")))()
    assert rows == [("user", "Hello there", "done", 1), ("assistant", "", "pending", 2)]
    assert broker.llen(QUEUE) == 1
    conversation_row = await database_sync_to_async(Conversation.objects.get)(id=conversation.id)
    assert conversation_row.title == "Hello there"
    await socket.disconnect()


async def test_a_second_send_while_answering_is_refused(conversation, alice, broker):
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "first"})
    await receive(socket), await receive(socket)
    await send(socket, {"type": "send", "content": "second"})
    frame = await receive(socket)
    assert frame["type"] == "error" and frame["code"] == "busy"
    assert await messages_written() == 2 and broker.llen(QUEUE) == 1
    await socket.disconnect()


async def test_stop_before_a_worker_starts_cancels_the_answer(conversation, alice, broker):
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "first"})
    _, answer = await receive(socket), await receive(socket)
    await send(socket, {"type": "stop", "message_id": answer["message"]["id"]})
    done = await receive(socket)
    assert done == {"type": "done", "message_id": answer["message"]["id"], "finish_reason": "cancelled",
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0}}
    row = await database_sync_to_async(Message.objects.get)(id=answer["message"]["id"])
    assert row.status == "cancelled"
    # The conversation is free again.
    await send(socket, {"type": "send", "content": "second"})
    assert (await receive(socket))["message"]["content"] == "second"
    await socket.disconnect()


async def test_resume_returns_the_saved_row(conversation, alice, broker):
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "first"})
    _, answer = await receive(socket), await receive(socket)
    await send(socket, {"type": "resume", "message_id": answer["message"]["id"], "after_seq": 0})
    frame = await receive(socket)
    assert frame["type"] == "message" and frame["message"]["id"] == answer["message"]["id"]
    assert frame["message"]["status"] == "pending" and frame["message"]["seq"] == 0
    await socket.disconnect()


async def test_another_users_socket_hears_nothing(conversation, alice, bob, broker):
    theirs = await database_sync_to_async(Conversation.objects.create)(user=bob, model="deepseek-chat")
    bobs = await open_socket(bob, theirs.id)
    alices = await open_socket(alice, conversation.id)
    await send(alices, {"type": "send", "content": "private"})
    await receive(alices)
    assert await bobs.receive_nothing(timeout=0.5)
    await alices.disconnect()
    await bobs.disconnect()


BAD_FRAMES = [
    ("not json at all", "invalid_json"),
    ("[1, 2, 3]", "invalid_frame"),
    ({"type": "dance"}, "unknown_type"),
    ({"type": ["send"]}, "unknown_type"),
    ({"content": "no type"}, "unknown_type"),
    ({"type": "send", "content": ""}, "empty_message"),
    ({"type": "send", "content": "  \n\t "}, "empty_message"),
    ({"type": "send", "content": 42}, "invalid_frame"),
    ({"type": "send", "content": "nul \u0000 byte"}, "invalid_content"),
    ('{"type": "send", "content": "lone \\ud800 surrogate"}', "invalid_content"),
    ({"type": "regenerate", "message_id": 7}, "invalid_id"),
    ({"type": "select", "message_id": None}, "invalid_id"),
    ({"type": "send", "content": "hi", "client_id": "x" * 65}, "invalid_frame"),
    ({"type": "send", "content": "hi", "attachments": "abc"}, "invalid_frame"),
    ({"type": "send", "content": "hi", "attachments": [str(uuid.uuid4())]}, "not_found"),
    ({"type": "send", "content": "hi", "attachments": ["nope"]}, "invalid_id"),
    ({"type": "stop", "message_id": "not-a-uuid"}, "invalid_id"),
    ({"type": "stop"}, "invalid_id"),
    ({"type": "resume", "message_id": str(uuid.uuid4()), "after_seq": -1}, "invalid_frame"),
    ('{"type": "send", "content": ' + "[" * 20000 + "]" * 20000 + "}", "invalid_json"),
]


@pytest.mark.parametrize("frame, code", BAD_FRAMES, ids=[c for _, c in BAD_FRAMES])
async def test_a_bad_frame_gets_an_error_and_writes_nothing(conversation, alice, broker, frame, code):
    socket = await open_socket(alice, conversation.id)
    await send(socket, frame)
    reply = await receive(socket)
    assert reply["type"] == "error" and reply["code"] == code and reply["message"]
    assert await messages_written() == 0 and broker.llen(QUEUE) == 0
    await assert_still_open(socket)
    await socket.disconnect()


async def test_an_over_long_prompt_is_refused(conversation, alice, broker, settings):
    settings.MAX_PROMPT_CHARS = 50
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "x" * 51})
    reply = await receive(socket)
    assert reply["code"] == "prompt_too_long" and "50" in reply["message"]
    await send(socket, {"type": "send", "content": "x" * (50 * 6 + 5000)})
    assert (await receive(socket))["code"] == "frame_too_large"
    assert await messages_written() == 0 and broker.llen(QUEUE) == 0
    await assert_still_open(socket)
    await socket.disconnect()


async def test_a_binary_frame_is_refused(conversation, alice):
    socket = await open_socket(alice, conversation.id)
    await socket.send_to(bytes_data=b"\xff\xfe")
    assert (await receive(socket))["code"] == "invalid_frame"
    await assert_still_open(socket)
    await socket.disconnect()


async def test_a_flood_of_frames_is_rate_limited(conversation, alice, broker, settings):
    settings.SOCKET_FRAME_BURST = 5
    settings.SOCKET_FRAMES_PER_SECOND = 0.01
    socket = await open_socket(alice, conversation.id)
    codes = []
    for _ in range(8):
        await send(socket, {"type": "send", "content": ""})
        codes.append((await receive(socket))["code"])
    assert codes == ["empty_message"] * 5 + ["rate_limited"] * 3
    assert await messages_written() == 0
    await socket.disconnect()


async def test_a_socket_that_keeps_flooding_after_its_refusals_is_closed(conversation, alice, bob, broker, settings):
    """A page stops at the first rate_limited; a client that sends on past SOCKET_REFUSALS_BEFORE_CLOSE refusals
    in a row is closed (4008), so the rest of its flood costs nothing, and other sockets are untouched."""
    settings.SOCKET_FRAME_BURST = 2
    settings.SOCKET_FRAMES_PER_SECOND = 0.01
    settings.SOCKET_REFUSALS_BEFORE_CLOSE = 3
    theirs = await database_sync_to_async(Conversation.objects.create)(user=bob, model="deepseek-chat")
    bystander = await open_socket(bob, theirs.id)
    socket = await open_socket(alice, conversation.id)
    for _ in range(2):
        await send(socket, {"type": "send", "content": ""})
        assert (await receive(socket))["code"] == "empty_message"
    for _ in range(3):  # refused, each with its error frame
        await send(socket, {"type": "send", "content": "hello"})
        assert (await receive(socket))["code"] == "rate_limited"
    await send(socket, {"type": "send", "content": "hello"})  # the fourth refusal in a row closes it
    closed = await socket.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4008}
    assert await messages_written() == 0
    # Bob's socket still works.
    await send(bystander, {"type": "send", "content": ""})
    assert (await receive(bystander))["code"] == "empty_message"
    await bystander.disconnect()


async def test_a_resume_flood_past_its_refusals_is_closed_too(conversation, alice, broker, settings):
    settings.SOCKET_RESUME_BURST = 1
    settings.SOCKET_RESUMES_PER_SECOND = 0.01
    settings.SOCKET_REFUSALS_BEFORE_CLOSE = 2
    answer = await database_sync_to_async(Message.objects.create)(
        conversation=conversation, position=1, role="assistant", content="an answer")
    socket = await open_socket(alice, conversation.id)
    resume = {"type": "resume", "message_id": str(answer.id), "after_seq": 0}
    await send(socket, resume)
    assert (await receive(socket))["type"] == "message"
    assert (await receive(socket))["type"] == "done"
    for _ in range(2):
        await send(socket, resume)
        assert (await receive(socket))["code"] == "rate_limited"
    await send(socket, resume)
    assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4008}


async def test_stop_and_resume_of_another_users_message_reveal_nothing(conversation, alice, bob, broker):
    theirs = await database_sync_to_async(Conversation.objects.create)(user=bob, model="deepseek-chat")
    secret = await database_sync_to_async(Message.objects.create)(
        conversation=theirs, position=1, role="assistant", status="pending", content="bob's secret")
    socket = await open_socket(alice, conversation.id)
    for frame in ({"type": "stop", "message_id": str(secret.id)},
                  {"type": "resume", "message_id": str(secret.id), "after_seq": 0}):
        await send(socket, frame)
        reply = await receive(socket)
        assert reply["code"] == "not_found" and "secret" not in str(reply)
    row = await database_sync_to_async(Message.objects.get)(id=secret.id)
    assert row.status == "pending" and not row.stop_requested
    await socket.disconnect()


async def test_a_message_too_long_for_the_models_context_is_refused_before_saving(
    conversation, alice, broker, settings, demo_model_path
):
    settings.DEEPSEEK_MODELS = [{"name": "deepseek-chat", "path": str(demo_model_path), "max_context": 256,
                                 "max_new_tokens": 64}]
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "many words " * 300})
    reply = await receive(socket)
    assert reply["code"] == "prompt_too_long" and "192" in reply["message"]
    assert await messages_written() == 0 and broker.llen(QUEUE) == 0
    await send(socket, {"type": "send", "content": "short enough"})
    assert (await receive(socket))["message"]["content"] == "short enough"
    await socket.disconnect()
