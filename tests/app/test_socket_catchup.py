"""A socket whose answer frames stop coming catches up from the row (chat/conversations/following.py):
frames lost on the way, or a restarted Redis that forgot the socket's group membership."""
from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from chat.conversations import events, following
from chat.conversations.following import Follower
from chat.conversations.frames import delta_frame
from chat.conversations.models import Conversation, Message
from tests.support.sockets import open_socket, receive, send

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def quick_catchup(monkeypatch):
    monkeypatch.setattr(following, "CATCH_UP_SECONDS", 0.4)


@pytest.fixture
def answer(alice):
    chat = Conversation.objects.create(user=alice, model="deepseek-chat")
    question = Message.objects.create(conversation=chat, role="user", content="Hi", position=0, status="done")
    return Message.objects.create(conversation=chat, role="assistant", parent=question, position=1,
                                  status="streaming", content="Hello", seq=1)


def write(message_id, **fields) -> None:
    """What the worker saves (without publishing it: the frames are 'lost')."""
    Message.objects.filter(id=message_id).update(updated_at=timezone.now(), **fields)


async def follow(user, answer):
    socket = await open_socket(user, answer.conversation_id)
    await send(socket, {"type": "resume", "message_id": str(answer.id), "after_seq": 0})
    snapshot = await receive(socket)
    assert snapshot["message"]["seq"] == 1 and snapshot["message"]["status"] == "streaming"
    return socket


async def test_a_lost_done_is_repaired_from_the_row(alice, answer):
    socket = await follow(alice, answer)
    await database_sync_to_async(write)(answer.id, content="Hello there.", seq=3, status="done",
                                        finish_reason="stop")
    final, done = await receive(socket, timeout=5), await receive(socket, timeout=5)
    assert final["type"] == "message" and final["message"]["content"] == "Hello there."
    assert final["message"]["status"] == "done"
    assert done == {**done, "type": "done", "message_id": str(answer.id), "finish_reason": "stop"}
    assert await socket.receive_nothing(timeout=1.0)  # caught up once, not again and again
    await socket.disconnect()


async def test_lost_deltas_come_as_a_snapshot_and_a_quiet_unchanged_row_sends_nothing(alice, answer):
    socket = await follow(alice, answer)
    assert await socket.receive_nothing(timeout=1.0)  # quiet, but the row has nothing new
    await database_sync_to_async(write)(answer.id, content="Hello wor", seq=2)
    snapshot = await receive(socket, timeout=5)
    assert snapshot["type"] == "message"
    assert (snapshot["message"]["seq"], snapshot["message"]["content"]) == (2, "Hello wor")
    assert snapshot["message"]["status"] == "streaming"
    await socket.disconnect()


async def test_after_catching_up_live_frames_still_come(alice, answer):
    socket = await follow(alice, answer)
    # A delta published while nobody listened (Redis restarting): only the row has it.
    await database_sync_to_async(write)(answer.id, content="Hello wor", seq=2)
    snapshot = await receive(socket, timeout=5)
    assert snapshot["message"]["seq"] == 2
    await events.apublish(answer.conversation_id, delta_frame(answer.id, 3, "ld", ""))
    delta = await receive(socket, timeout=5)
    assert (delta["type"], delta["seq"], delta["content"]) == ("delta", 3, "ld")
    await socket.disconnect()


async def test_another_conversations_rows_are_never_read(alice, bob, answer):
    theirs = await database_sync_to_async(Conversation.objects.create)(user=bob, model="deepseek-chat")
    # A frame naming alice's answer on bob's socket (it cannot come through his group, but say it did)
    # is followed, yet the row is looked up in the socket's own conversation only.
    catchup = Follower(theirs.id, quiet_seconds=0)
    catchup.heard({"type": "delta", "message_id": str(answer.id), "seq": 0})
    frames = await database_sync_to_async(catchup.catch_up)(catchup.quiet())
    assert frames == [] and catchup.active == {}


def test_it_follows_active_answers_and_forgets_finished_ones():
    catchup = Follower("a-conversation", quiet_seconds=3)
    catchup.heard({"type": "message", "message": {"id": "a", "role": "assistant", "status": "pending", "seq": 0}},
                  now=0)
    catchup.heard({"type": "message", "message": {"id": "q", "role": "user", "status": "done", "seq": 0}}, now=0)
    catchup.heard({"type": "delta", "message_id": "a", "seq": 4}, now=1)
    catchup.heard({"type": "delta", "message_id": "a", "seq": 2}, now=2)  # a repeat never lowers the seq
    assert list(catchup.active) == ["a"] and catchup.active["a"].seq == 4
    assert catchup.quiet(now=4.9) == [] and catchup.quiet(now=5) == ["a"]
    catchup.heard({"type": "done", "message_id": "a"}, now=6)
    assert catchup.active == {}
