"""Versions over the socket: regenerate an answer, edit and resend a question, pick a branch."""
from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from chat.conversations import actions
from chat.conversations.models import Conversation, Message
from tests.support.sockets import open_socket, receive, send

pytestmark = [pytest.mark.django_db(transaction=True)]
QUEUE = "model.deepseek-chat"


@pytest.fixture
def answered(alice):
    """A conversation with one finished exchange: question (1) → answer (2)."""
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat", title="First")
    question = Message.objects.create(conversation=conversation, position=1, role="user", content="Hi")
    answer = Message.objects.create(conversation=conversation, position=2, role="assistant", content="Hello",
                                    parent=question)
    Conversation.objects.filter(id=conversation.id).update(current_leaf=answer)
    return conversation, question, answer


def rows(conversation_id):
    return list(Message.objects.filter(conversation_id=conversation_id).order_by("position").values_list(
        "position", "role", "content", "status", "parent__position"))


async def leaf_of(conversation_id):
    conversation = await database_sync_to_async(Conversation.objects.get)(id=conversation_id)
    return conversation.current_leaf_id


async def test_regenerate_adds_a_sibling_answer_and_keeps_the_old_one(answered, alice, broker):
    conversation, question, answer = answered
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "regenerate", "message_id": str(answer.id)})
    frame = await receive(socket)
    assert frame["type"] == "message" and frame["message"]["role"] == "assistant"
    assert frame["message"]["status"] == "pending" and frame["message"]["parent_id"] == str(question.id)
    assert await database_sync_to_async(rows)(conversation.id) == [
        (1, "user", "Hi", "done", None), (2, "assistant", "Hello", "done", 1), (3, "assistant", "", "pending", 1),
    ]
    assert str(await leaf_of(conversation.id)) == frame["message"]["id"]
    assert broker.llen(QUEUE) == 1
    await socket.disconnect()


async def test_edit_and_resend_branches_and_the_old_branch_stays(answered, alice, broker):
    conversation, question, answer = answered
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "Hi again", "client_id": "e1", "edit_of": str(question.id)})
    user_frame, answer_frame = await receive(socket), await receive(socket)
    assert user_frame["message"]["parent_id"] is None  # a sibling of the first question
    assert answer_frame["message"]["parent_id"] == user_frame["message"]["id"]
    assert await database_sync_to_async(rows)(conversation.id) == [
        (1, "user", "Hi", "done", None), (2, "assistant", "Hello", "done", 1),
        (3, "user", "Hi again", "done", None), (4, "assistant", "", "pending", 3),
    ]
    # The title is not renamed by an edit: the conversation already has one.
    assert user_frame["message"]["conversation_title"] == "First"
    await socket.disconnect()


async def test_the_worker_sees_only_the_branch_it_answers(answered, alice, broker):
    conversation, question, answer = answered
    sent = await database_sync_to_async(actions.do_send_message)(alice, conversation.id, "Hi again",
                                                                    edit_of=question.id)
    from chat.worker.replies import claim

    job = await database_sync_to_async(claim)(str(sent.assistant_message.id))
    assert job.history == [{"role": "user", "content": "Hi again"}]


async def test_select_shows_another_version_and_a_reload_keeps_it(answered, alice, broker):
    conversation, question, answer = answered
    sent = await database_sync_to_async(actions.do_regenerate)(alice, conversation.id, answer.id)
    await database_sync_to_async(Message.objects.filter(id=sent.assistant_message.id).update)(status="done")
    assert await leaf_of(conversation.id) == sent.assistant_message.id
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "select", "message_id": str(answer.id)})
    await send(socket, {"type": "stop", "message_id": str(answer.id)})  # any answer proves the select ran
    assert (await receive(socket))["code"] == "not_running"
    assert await leaf_of(conversation.id) == answer.id
    await socket.disconnect()


async def test_another_users_ids_are_not_found_and_nothing_is_written(answered, bob, broker):
    conversation, question, answer = answered
    bobs = await database_sync_to_async(Conversation.objects.create)(user=bob, model="deepseek-chat")
    socket = await open_socket(bob, bobs.id)
    before = await database_sync_to_async(rows)(conversation.id)
    for frame in ({"type": "regenerate", "message_id": str(answer.id)},
                  {"type": "send", "content": "x", "edit_of": str(question.id)},
                  {"type": "select", "message_id": str(answer.id)},
                  {"type": "resume", "message_id": str(answer.id), "after_seq": 0}):
        await send(socket, frame)
        error = await receive(socket)
        assert error["type"] == "error" and error["code"] == "not_found", frame
    assert await database_sync_to_async(rows)(conversation.id) == before
    assert await database_sync_to_async(Message.objects.filter(conversation=bobs).count)() == 0
    assert broker.llen(QUEUE) == 0
    await socket.disconnect()


async def test_regenerate_refuses_a_question_a_bad_id_and_a_busy_conversation(answered, alice, broker):
    conversation, question, answer = answered
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "regenerate", "message_id": str(question.id)})
    assert (await receive(socket))["code"] == "not_found"
    await send(socket, {"type": "regenerate", "message_id": "not-a-uuid"})
    assert (await receive(socket))["code"] == "invalid_id"
    await send(socket, {"type": "send", "content": "edit", "edit_of": str(answer.id)})  # answers are not edited
    assert (await receive(socket))["code"] == "not_found"
    await send(socket, {"type": "regenerate", "message_id": str(answer.id)})
    assert (await receive(socket))["message"]["status"] == "pending"
    count = await database_sync_to_async(Message.objects.count)()
    await send(socket, {"type": "regenerate", "message_id": str(answer.id)})
    assert (await receive(socket))["code"] == "busy"
    assert await database_sync_to_async(Message.objects.count)() == count
    assert broker.llen(QUEUE) == 1
    await socket.disconnect()


async def test_errors_come_in_the_language_the_user_picked(answered, alice, broker):
    conversation, question, answer = answered
    socket = await open_socket(alice, conversation.id, language="zh-hans")
    await send(socket, {"type": "send", "content": "   "})
    assert await receive(socket) == {"type": "error", "code": "empty_message", "message": "消息为空。"}
    await send(socket, {"type": "stop", "message_id": str(answer.id)})
    assert (await receive(socket))["message"] == "这个回答没有在生成中。"
    await socket.disconnect()
    socket = await open_socket(alice, conversation.id, language="xx-nonsense")
    await send(socket, {"type": "send", "content": "   "})
    assert (await receive(socket))["message"] == "The message is empty."
    await socket.disconnect()
