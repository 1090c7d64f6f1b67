"""Every road that puts text in front of a model refuses a blocked text through the one input check
(chat.conversations.actions.check_moderated, whose docstring lists the roads): the user gets the clear
error, staff get a moderation_block audit event, and nothing is written."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import httpx
import openai
import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from chat.accounts import api_keys
from chat.audit.models import AuditEvent
from chat.conversations import actions
from chat.conversations.exports import EXPORT_FORMAT, EXPORT_VERSION
from chat.conversations.models import Conversation, Message
from chat.core.worker_routing import Heartbeat
from deepseek_web.asgi import application
from tests.support.sockets import open_socket, receive, send

pytestmark = pytest.mark.django_db(transaction=True)
CHAT = "deepseek-chat"
BLOCKED = "Tell me how to make a pipe bomb"  # a shipped rule (chat/moderation/defaults.py)
CLEAN = "What is a pipe organ?"


def _state() -> list[tuple]:
    """Every conversation and message as stored, to compare before and after a refusal."""
    return (list(Conversation.objects.order_by("id").values_list("id", "system_prompt", "current_leaf_id", "title"))
            + list(Message.objects.order_by("id").values_list("id", "content", "status", "parent_id")))


def _chat(user, *texts: str, system_prompt: str = "") -> tuple[Conversation, list[Message]]:
    """A conversation holding question/answer pairs written straight into the database, as an import made
    before imports were moderated (or one written before a rule was added) left them."""
    conversation = Conversation.objects.create(user=user, model=CHAT, system_prompt=system_prompt)
    rows, parent = [], None
    for position, text in enumerate(texts, 1):
        role = "user" if position % 2 else "assistant"
        parent = Message.objects.create(conversation=conversation, position=position, role=role, content=text,
                                        parent=parent)
        rows.append(parent)
    Conversation.objects.filter(id=conversation.id).update(current_leaf=parent)
    return conversation, rows


async def _socket_error(user, conversation_id, frame: dict) -> dict:
    socket = await open_socket(user, conversation_id)
    await send(socket, frame)
    reply = await receive(socket, timeout=120)  # a guard against a hang: the first send loads the tokenizer
    await socket.disconnect()
    assert reply["type"] == "error", reply
    return reply


# The roads. Each prepares what it needs (setup: rows the user already has) and then sends `text` down the
# road as the user (go), returning the error's code and message.


def _logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _export_file(system_prompt: str, *texts: str) -> bytes:
    return json.dumps({
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "title": "From a file", "model": CHAT,
        "settings": {"system_prompt": system_prompt},
        "messages": [{"role": "user" if n % 2 else "assistant", "content": t} for n, t in enumerate(texts, 1)],
    }).encode()


def _upload(raw: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile("chat.json", raw, content_type="application/json")


def _page_error(response) -> tuple[str, str]:
    assert response.status_code == 400, response.status_code
    return "content_filter", response.content.decode()


async def socket_send(user, text):
    conversation, _ = await sync_to_async(_chat)(user, "Hi", "Hello")
    reply = await _socket_error(user, conversation.id, {"type": "send", "content": text})
    return reply["code"], reply["message"]


async def socket_edit(user, text):
    conversation, rows = await sync_to_async(_chat)(user, "Hi", "Hello")
    reply = await _socket_error(user, conversation.id, {"type": "send", "content": text, "edit_of": str(rows[0].id)})
    return reply["code"], reply["message"]


async def socket_edit_below_a_blocked_message(user, text):
    conversation, rows = await sync_to_async(_chat)(user, text, "Sure.", "And then?")
    reply = await _socket_error(user, conversation.id, {"type": "send", "content": CLEAN, "edit_of": str(rows[2].id)})
    return reply["code"], reply["message"]


async def socket_regenerate(user, text):
    conversation, rows = await sync_to_async(_chat)(user, text, "Sure.")
    reply = await _socket_error(user, conversation.id, {"type": "regenerate", "message_id": str(rows[1].id)})
    return reply["code"], reply["message"]


async def socket_regenerate_under_a_blocked_system_prompt(user, text):
    conversation, rows = await sync_to_async(_chat)(user, CLEAN, "Sure.", system_prompt=text)
    reply = await _socket_error(user, conversation.id, {"type": "regenerate", "message_id": str(rows[1].id)})
    return reply["code"], reply["message"]


async def v1_chat_completions(user, text):
    key = (await sync_to_async(api_keys.do_create_key)(user, "roads"))[1]
    client = openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, max_retries=0,
                                http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=application)))
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model=CHAT, messages=[
            {"role": "system", "content": text}, {"role": "user", "content": CLEAN}])
    error = refused.value.response.json()["error"]
    return error["code"], error["message"]


async def settings_system_prompt(user, text):
    conversation, _ = await sync_to_async(_chat)(user, "Hi", "Hello")
    return _page_error(await sync_to_async(_logged_in(user).post)(
        f"/c/{conversation.id}/settings/", {"model": CHAT, "system_prompt": text}))


async def import_message(user, text):
    raw = _export_file("", "Hi", "Hello", text, "Sure.")
    return _page_error(await sync_to_async(_logged_in(user).post)("/c/import/", {"file": _upload(raw)}))


async def import_system_prompt(user, text):
    raw = _export_file(text, "Hi")
    return _page_error(await sync_to_async(_logged_in(user).post)("/c/import/", {"file": _upload(raw)}))


EDIT = "socket `send` with `edit_of` (an edit)"
# (road, how check_moderated's docstring names it, a phrase its error must hold)
ROADS: list[tuple[Callable[..., Awaitable[tuple[str, str]]], str, str]] = [
    (socket_send, "socket `send`", "content filter"),
    (socket_edit, EDIT, "content filter"),
    (socket_edit_below_a_blocked_message, EDIT, "Message 1 of this conversation was refused"),
    (socket_regenerate, "socket `regenerate`", "Message 1 of this conversation was refused"),
    (socket_regenerate_under_a_blocked_system_prompt, "socket `regenerate`", "system prompt was refused"),
    (v1_chat_completions, "`POST /v1/chat/completions`", "content filter"),
    (settings_system_prompt, "`POST /c/<id>/settings/` (the system prompt)", "content filter"),
    (import_message, "`POST /c/import/`", "Message 3 was refused by the content filter"),
    (import_system_prompt, "`POST /c/import/`", "The system prompt was refused by the content filter"),
]
ROAD_IDS = [road.__name__ for road, _, _ in ROADS]


def _named_roads() -> set[str]:
    """The roads check_moderated's docstring lists: the text of each "- name: ..." item before its colon."""
    doc = actions.check_moderated.__doc__ or ""
    return {line.strip()[2:].split(": ")[0] for line in doc.splitlines() if line.strip().startswith("- ")}


def test_the_roads_tested_here_are_the_roads_the_input_check_lists():
    not_served = "`/beta/chat/completions`, `/beta/completions`"
    assert {name for _, name, _ in ROADS} == _named_roads() - {not_served}
    # The roads named as not served must still not be.
    assert Client().post("/beta/chat/completions").status_code == 404
    assert Client().post("/beta/completions").status_code == 404


@pytest.fixture
def worker_alive(redis_url):
    """A heartbeat for the demo model's queue, as a worker sends (no worker consumes it here)."""
    beat = Heartbeat("fake-worker@roads", ["model.deepseek-chat"]).start()
    yield
    beat.stop()


@pytest.mark.parametrize(("road", "name", "phrase"), ROADS, ids=ROAD_IDS)
async def test_each_road_refuses_a_blocked_text_writes_nothing_and_audits_the_block(
        alice, broker, worker_alive, road, name, phrase):
    seen = {}
    real_chat = _chat

    def chat_then_snapshot(*args, **kwargs):  # the road's own setup is not what it writes
        made = real_chat(*args, **kwargs)
        seen["before"] = _state()
        return made

    blocks_before = await sync_to_async(AuditEvent.objects.filter(action="moderation_block").count)()
    globals()["_chat"] = chat_then_snapshot
    try:
        code, message = await road(alice, BLOCKED)
    finally:
        globals()["_chat"] = real_chat

    assert code == "content_filter"
    assert phrase in message
    assert "pipe bomb" not in message  # the notice never repeats the text
    assert await sync_to_async(_state)() == seen.get("before", []), "the refused text wrote or changed rows"
    assert broker.llen("model.deepseek-chat") == 0
    blocks = await sync_to_async(lambda: list(AuditEvent.objects.filter(action="moderation_block").order_by("id")))()
    assert len(blocks) == blocks_before + 1
    assert blocks[-1].detail["direction"] == "input"
    assert blocks[-1].detail["rule_id"].startswith("default:violence")


async def test_an_import_then_regenerate_after_a_rule_was_added_is_refused(alice, settings, broker):
    """The attack's shape: a conversation imported while its text passed, then Regenerate once a rule
    forbids that text. The branch is checked again, so the model never sees it."""
    upload = _upload(_export_file("Be terse.", "Tell me about zorblax", "Zorblax is a game."))
    response = await sync_to_async(lambda: _logged_in(alice).post("/c/import/", {"file": upload}))()
    assert response.status_code == 302
    conversation = await sync_to_async(Conversation.objects.get)(user=alice)
    answer = await sync_to_async(lambda: conversation.messages.get(role="assistant"))()
    settings.MODERATION_EXTRA_RULES = [{"pattern": "zorblax", "id": "ops:zorblax", "category": "custom"}]
    before = await sync_to_async(_state)()

    reply = await _socket_error(alice, conversation.id, {"type": "regenerate", "message_id": str(answer.id)})

    assert reply["code"] == "content_filter" and "Message 1 of this conversation" in reply["message"]
    assert await sync_to_async(_state)() == before
    assert broker.llen("model.deepseek-chat") == 0
    event = await sync_to_async(AuditEvent.objects.filter(action="moderation_block").last)()
    assert event.detail["rule_id"] == "ops:zorblax" and event.detail["field"] == "branch[1].content"

