"""An API response follows its answer on the socket's follower (chat/conversations/following.py): text in
seq order, a gap repaired from the row at once, and a lost end read from the row once the frames stop."""
from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from chat.api import stream
from chat.api.stream import AnswerFollower, Finished, Text
from chat.conversations import events
from chat.conversations.frames import delta_frame
from chat.conversations.models import Conversation, Message

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def quick_catchup(monkeypatch):
    monkeypatch.setattr(stream, "CATCH_UP_SECONDS", 0.4)


@pytest.fixture
def answer(alice):
    chat = Conversation.objects.create(user=alice, model="deepseek-chat", source=Conversation.Source.API)
    question = Message.objects.create(conversation=chat, role="user", content="Hi", position=1, status="done")
    return Message.objects.create(conversation=chat, role="assistant", parent=question, position=2,
                                  status="streaming")


def write(message_id, **fields) -> None:
    """What the worker saves (its frames may be 'lost')."""
    Message.objects.filter(id=message_id).update(updated_at=timezone.now(), **fields)


async def following_answer(answer) -> tuple[AnswerFollower, object]:
    follower = AnswerFollower(answer.conversation_id)
    await follower.subscribe()
    follower.bind(answer.id)
    return follower, aiter(follower.events(keepalive_seconds=30, queue_timeout=60))


async def test_a_gap_in_the_seq_numbers_is_filled_from_the_row_and_a_repeat_adds_nothing(answer):
    follower, stream = await following_answer(answer)
    try:
        await database_sync_to_async(write)(answer.id, content="Hel", seq=1)
        await events.apublish(answer.conversation_id, delta_frame(answer.id, 1, "Hel", ""))
        assert await anext(stream) == Text("Hel", "")
        await events.apublish(answer.conversation_id, delta_frame(answer.id, 1, "Hel", ""))  # a repeat
        # Delta 2 is lost; delta 3 comes: the row (saved before each publish) has both.
        await database_sync_to_async(write)(answer.id, content="Hello wor", seq=3)
        await events.apublish(answer.conversation_id, delta_frame(answer.id, 3, "wor", ""))
        assert await anext(stream) == Text("lo wor", "")
        await events.apublish(answer.conversation_id, delta_frame(answer.id, 4, "ld", ""))
        assert await anext(stream) == Text("ld", "")
        assert (follower.sent_content, follower.follower.seq_of(str(answer.id))) == ("Hello world", 4)
    finally:
        await follower.close()


async def test_a_lost_end_is_read_from_the_row_when_the_frames_stop(answer):
    follower, stream = await following_answer(answer)
    try:
        await database_sync_to_async(write)(answer.id, content="Hello", seq=1)
        await events.apublish(answer.conversation_id, delta_frame(answer.id, 1, "Hello", ""))
        assert await anext(stream) == Text("Hello", "")
        # The last delta, the final message and done are all lost: only the row has the end.
        await database_sync_to_async(write)(answer.id, content="Hello there.", seq=2, status="done",
                                            finish_reason="stop")
        assert await anext(stream) == Text(" there.", "")
        finished = await anext(stream)
        assert isinstance(finished, Finished) and finished.message.finish_reason == "stop"
        assert finished.message.content == "Hello there." and finished.error == ""
    finally:
        await follower.close()
