"""Message floods per user, across tabs and conversations (chat/conversations/message_limits.py): refused with a clear
error, and nothing written for the refused message."""
from __future__ import annotations

import logging

import pytest
from channels.db import database_sync_to_async

from chat.conversations import actions, message_limits
from chat.conversations.models import Conversation, Message
from chat.core.errors import ChatError
from tests.support.sockets import open_socket, receive, send

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fresh_counts(broker):
    """The minute's counts are keyed by user id, which a later test's user may reuse."""
    for name in broker.scan_iter("deepseek:chat:messages:*"):
        broker.delete(name)
    yield
    for name in broker.scan_iter("deepseek:chat:messages:*"):
        broker.delete(name)


def new_chats(user, count: int) -> list[Conversation]:
    return [Conversation.objects.create(user=user, model="deepseek-chat") for _ in range(count)]


def rows() -> int:
    return Message.objects.count()


def test_messages_per_minute_are_counted_across_conversations(alice, bob, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 3
    chats = new_chats(alice, 3)
    for chat in chats:
        actions.do_send_message(alice, chat.id, "Hello")
        Message.objects.filter(conversation=chat, status="pending").update(status="done")  # as if answered
    before = rows()
    with pytest.raises(ChatError) as refused:
        actions.do_send_message(alice, chats[0].id, "One more")
    assert refused.value.code == "rate_limited"
    assert "too fast (at most 3 a minute)" in refused.value.message and "Try again in" in refused.value.message
    assert rows() == before
    # Someone else is not held back by alice's flood.
    actions.do_send_message(bob, new_chats(bob, 1)[0].id, "Hello")


def test_a_regeneration_counts_as_a_message(alice, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 1
    [chat] = new_chats(alice, 1)
    answer = actions.do_send_message(alice, chat.id, "Hello").assistant_message
    Message.objects.filter(id=answer.id).update(status="done")
    before = rows()
    with pytest.raises(ChatError) as refused:
        actions.do_regenerate(alice, chat.id, answer.id)
    assert refused.value.code == "rate_limited" and rows() == before


def test_answers_being_written_at_once_are_limited_and_free_again_when_one_ends(alice, settings):
    settings.CHAT_ACTIVE_ANSWERS_PER_USER = 2
    chats = new_chats(alice, 3)
    first = actions.do_send_message(alice, chats[0].id, "One").assistant_message
    actions.do_send_message(alice, chats[1].id, "Two")
    before = rows()
    with pytest.raises(ChatError) as refused:
        actions.do_send_message(alice, chats[2].id, "Three")
    assert refused.value.code == "too_many_answers"
    assert "2 answers are being written for you already" in refused.value.message
    assert rows() == before
    Message.objects.filter(id=first.id).update(status="done")
    actions.do_send_message(alice, chats[2].id, "Three")
    assert rows() == before + 2


def test_api_requests_are_not_counted_as_chat_answers(alice, settings):
    settings.CHAT_ACTIVE_ANSWERS_PER_USER = 1
    hidden = Conversation.objects.create(user=alice, model="deepseek-chat", source=Conversation.Source.API)
    Message.objects.create(conversation=hidden, role="assistant", position=1, status="streaming")
    [chat] = new_chats(alice, 1)
    actions.do_send_message(alice, chat.id, "Hello")  # the API's own limits cover that stream


def test_zero_means_no_limit(alice, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    settings.CHAT_ACTIVE_ANSWERS_PER_USER = 0
    for chat in new_chats(alice, 6):
        actions.do_send_message(alice, chat.id, "Hello")
    assert Message.objects.filter(status="pending").count() == 6


def test_without_redis_the_minute_limit_is_skipped_with_a_warning(alice, settings, caplog):
    settings.CHAT_MESSAGES_PER_MINUTE = 1
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="chat.conversations.message_limits"):
        message_limits.check_and_count(alice)
        message_limits.check_and_count(alice)
    assert "Redis unavailable" in caplog.text


async def test_the_socket_answers_a_flood_with_the_error_and_stays_open(alice, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 1
    chats = await database_sync_to_async(new_chats)(alice, 2)
    first = await open_socket(alice, chats[0].id)
    await send(first, {"type": "send", "content": "Hello"})
    assert (await receive(first))["type"] == "message"  # the question
    second = await open_socket(alice, chats[1].id)  # another tab, another conversation
    await send(second, {"type": "send", "content": "Hello again"})
    frame = await receive(second)
    assert frame["type"] == "error" and frame["code"] == "rate_limited" and "too fast" in frame["message"]
    assert await database_sync_to_async(Message.objects.filter(conversation=chats[1]).count)() == 0
    await first.disconnect()
    await second.disconnect()
