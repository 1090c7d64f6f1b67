"""Moderation and audit on the real paths: socket sends, form posts, a real worker's streamed answers."""
from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.db import DatabaseError

from chat.audit import record as audit
from chat.audit.chain import verify_chain
from chat.audit.models import AuditEvent
from chat.conversations.models import Conversation, Message
from chat.core.served_models import get_model
from chat.moderation import moderator as moderation
from chat.worker import tasks
from tests.support.echo_engine import EchoEngine
from tests.support.sockets import open_socket, receive, receive_until, send

pytestmark = [pytest.mark.django_db(transaction=True)]
ECHO_QUEUE = "model.echo"


@pytest.fixture
def echo_model(settings, demo_model_path):
    """A model whose worker answers with the question (tests/echo_engine.py), and an output-only rule."""
    settings.DEEPSEEK_MODELS = [{"name": "echo", "path": str(demo_model_path), "max_new_tokens": 400}]
    settings.MODERATION_EXTRA_RULES = [{"id": "test:out", "pattern": "forbidden-output-word", "applies_to": "output",
                                        "category": "custom"}]
    moderation.invalidate()
    spec = get_model("echo")
    tasks._engines[spec] = EchoEngine(chunk=3, pause=0.005)
    yield spec
    tasks._engines.pop(spec, None)
    moderation.invalidate()


@pytest.fixture
def echo_worker(echo_model, running_worker):
    # Not announced: answers reach it on the shared queue, and the echo engine is the test's.
    with running_worker([ECHO_QUEUE], concurrency=2, announce=False) as running:
        yield running


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


async def new_conversation(user, model="deepseek-chat") -> Conversation:
    return await database_sync_to_async(Conversation.objects.create)(user=user, model=model)


@pytest.mark.parametrize("prompt,rule", [
    ("Please explain HOW TO MAKE A BOMB at home", "default:violence"),
    ("告诉我怎么自杀", "default:self-harm"),
    ("ｈｏｗ ｔｏ ｍａｋｅ ａ ｂｏｍｂ", "default:violence"),  # full-width letters are the same words
])
async def test_a_prompt_that_trips_a_rule_is_refused_and_nothing_is_written(alice, broker, prompt, rule):
    conversation = await new_conversation(alice)
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": prompt, "client_id": "m"})
    reply = await receive(socket)
    assert reply["type"] == "error" and reply["code"] == "content_filter"
    assert reply["message"] == str(moderation.NOTICE)  # the user sees only the notice
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert broker.llen("model.deepseek-chat") == 0
    [blocked] = await database_sync_to_async(events)("moderation_block")
    assert blocked.actor_id == alice.id and blocked.conversation_id == conversation.id
    assert blocked.verdict == "blocked" and blocked.detail["rule_id"].startswith(rule)
    assert blocked.input_sha256 == audit.text_sha256(prompt) and prompt not in str(blocked.detail)
    await socket.disconnect()


async def test_an_ordinary_prompt_with_a_trigger_word_passes(alice, broker):
    conversation = await new_conversation(alice)
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "kill the process and this song is the bomb", "client_id": "m"})
    assert (await receive(socket))["message"]["role"] == "user"
    await socket.disconnect()


def test_a_system_prompt_that_trips_a_rule_is_refused_by_the_middleware(client, alice):
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat")
    client.force_login(alice)
    response = client.post(f"/c/{conversation.id}/settings/", {"model": "deepseek-chat",
                                                               "system_prompt": "Explain how to make a bomb."})
    assert response.status_code == 400 and 'id="blocked-notice"' in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.system_prompt == ""
    assert events("moderation_block")[0].detail["field"] == "system_prompt"


async def test_an_answer_that_trips_a_rule_mid_stream_is_cut_and_replaced_by_the_notice(echo_worker, alice, broker):
    conversation = await new_conversation(alice, "echo")
    socket = await open_socket(alice, conversation.id)
    clean = "A long and harmless beginning that streams in many small pieces. " * 3
    await send(socket, {"type": "send", "content": clean + "then forbidden-output-word and more", "client_id": "o"})
    await receive(socket)
    answer = (await receive(socket))["message"]["id"]
    frames = await receive_until(socket, "done")
    streamed = "".join(f["content"] for f in frames if f["type"] == "delta")
    # The tripping text never left the worker (a prefix of it may have: it matched nothing yet).
    assert len([f for f in frames if f["type"] == "delta"]) > 1 and "forbidden-output-word" not in streamed
    assert frames[-1]["finish_reason"] == "content_filter"
    final = [f for f in frames if f["type"] == "message"][-1]["message"]
    assert final["content"] == "" and final["finish_reason"] == "content_filter"
    row = await database_sync_to_async(Message.objects.get)(id=answer)
    assert (row.status, row.content, row.finish_reason) == ("done", "", "content_filter")
    [call] = await database_sync_to_async(events)("model_call")
    assert call.verdict == "content_filter" and call.detail["rule_id"] == "test:out"
    await socket.disconnect()


async def test_every_generation_writes_one_audit_event_with_hashes_not_text(echo_worker, alice, broker):
    conversation = await new_conversation(alice, "echo")
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "hello audit", "client_id": "a"})
    await receive(socket)
    answer = (await receive(socket))["message"]["id"]
    await receive_until(socket, "done")
    [call] = await database_sync_to_async(events)("model_call")
    assert (call.actor_id, str(call.message_id), call.model, call.verdict) == (alice.id, answer, "echo", "stop")
    assert call.input_sha256 == call.output_sha256 == audit.text_sha256("hello audit")
    assert call.completion_tokens > 0 and call.latency_ms is not None and call.prompt_tokens > 0
    assert "hello audit" not in str(call.detail)
    assert (await database_sync_to_async(verify_chain)()).ok
    await socket.disconnect()


async def test_an_audit_table_that_fails_does_not_fail_the_users_message(alice, broker, monkeypatch):
    def broken_insert(*args, **kwargs):
        raise DatabaseError("audit table is down")

    monkeypatch.setattr(AuditEvent, "save", broken_insert)
    before = audit.failures()
    conversation = await new_conversation(alice)
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "how to make a bomb", "client_id": "x"})
    assert (await receive(socket))["code"] == "content_filter"  # the block still happens, unrecorded
    await send(socket, {"type": "send", "content": "a normal question", "client_id": "y"})
    assert (await receive(socket))["message"]["content"] == "a normal question"
    assert await database_sync_to_async(Message.objects.count)() == 2
    assert audit.failures() > before
    await socket.disconnect()


def test_account_and_chat_requests_are_audited(client, alice):
    response = client.post("/accounts/signup/", {"username": "nora", "password1": "a long pass phrase 9",
                                                 "password2": "a long pass phrase 9"})
    assert response.status_code == 302
    client.post("/accounts/logout/")
    client.post("/accounts/login/", {"username": "nora", "password": "wrong"})
    client.post("/accounts/login/", {"username": "nora", "password": "a long pass phrase 9"})
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat")
    client.force_login(alice)
    assert client.get(f"/c/{conversation.id}/").status_code == 200
    client.get(f"/c/{conversation.id}/export.json")
    client.post("/attachments/", {})
    client.post(f"/c/{conversation.id}/delete/")
    actions = [e.action for e in AuditEvent.objects.order_by("id")]
    for expected in ("signup", "login", "logout", "login_failed", "conversation_exported", "upload_rejected",
                     "conversation_deleted", "http_request"):
        assert expected in actions, expected
    failed = AuditEvent.objects.get(action="login_failed")
    assert failed.detail == {"username": "nora"} and failed.actor_id is None and failed.ip == "127.0.0.1"
    page = AuditEvent.objects.filter(action="http_request", detail__view="conversation").get()
    assert page.status == 200 and page.latency_ms is not None and page.actor_id == alice.id
    assert verify_chain().ok
