"""End to end on real parts: socket → Redis → a real Celery worker (threads) → the demo model."""
from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async

from chat.conversations.models import Conversation, Message
from deepseek_web.celery import app as celery_app
from tests.support.sockets import open_socket, receive, receive_until, send

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
QUEUE = "model.deepseek-chat"


@pytest.fixture(scope="module")
def worker(demo_model_path, running_worker):
    # Announced as the CLI worker announces itself (loads the model, joins the routing).
    with running_worker([QUEUE], concurrency=4) as running:
        yield running


@pytest.fixture
def long_answers(settings, demo_model_path):
    """The demo model with room for long answers, so there is time to press Stop. Greedy, so the
    answer never ends early on a sampled end-of-sentence token."""
    settings.DEEPSEEK_MODELS = [{"name": "deepseek-chat", "path": str(demo_model_path), "max_context": 2048,
                                 "max_new_tokens": 1900, "temperature": 0, "demo": True}]


def deltas_of(frames, message_id):
    return [f for f in frames if f["type"] == "delta" and f["message_id"] == message_id]


async def row(message_id) -> Message:
    return await database_sync_to_async(Message.objects.get)(id=message_id)


def ids_in(conversation: Conversation) -> set[str]:
    return {str(i) for i in Message.objects.filter(conversation=conversation).values_list("id", flat=True)}


async def new_conversation(user, model="deepseek-chat") -> Conversation:
    return await database_sync_to_async(Conversation.objects.create)(user=user, model=model)


async def ask(socket, content: str) -> tuple[str, list[dict]]:
    await send(socket, {"type": "send", "content": content, "client_id": "c"})
    question, answer = await receive(socket), await receive(socket)
    # Both messages are announced before the answer is queued, so before any of its frames.
    assert (question["message"]["role"], answer["message"]["role"]) == ("user", "assistant")
    return answer["message"]["id"], await receive_until(socket, "done")


async def test_the_answer_streams_with_consecutive_seq_and_is_saved(worker, alice, broker):
    conversation = await new_conversation(alice)
    socket = await open_socket(alice, conversation.id)
    answer_id, frames = await ask(socket, "Hello, who are you?")
    deltas = deltas_of(frames, answer_id)
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1)) and len(deltas) > 1
    done = frames[-1]
    saved = await row(answer_id)
    assert saved.status == "done"
    assert done["finish_reason"] == saved.finish_reason and saved.finish_reason in ("stop", "length")
    assert saved.content == "".join(d["content"] for d in deltas) != ""
    assert saved.seq == len(deltas)
    assert done["usage"] == {"prompt_tokens": saved.prompt_tokens, "completion_tokens": saved.completion_tokens}
    assert saved.prompt_tokens > 0 and 0 < saved.completion_tokens <= 96
    # Resume after the fact returns the whole row and its end.
    await send(socket, {"type": "resume", "message_id": answer_id, "after_seq": 3})
    snapshot, end = await receive(socket), await receive(socket)
    assert snapshot["message"]["content"] == saved.content and snapshot["message"]["seq"] == saved.seq
    assert end["type"] == "done"
    await socket.disconnect()


async def test_the_second_turn_sees_the_first(worker, alice, broker):
    conversation = await new_conversation(alice)
    socket = await open_socket(alice, conversation.id)
    first_id, _ = await ask(socket, "Remember the number 42.")
    second_id, _ = await ask(socket, "Which number?")
    first, second = await row(first_id), await row(second_id)
    assert second.prompt_tokens > first.prompt_tokens + first.completion_tokens // 2
    assert second.status == "done"
    await socket.disconnect()


async def test_two_conversations_stream_at_once(worker, alice, bob, broker):
    mine, theirs = await new_conversation(alice), await new_conversation(bob)
    a, b = await open_socket(alice, mine.id), await open_socket(bob, theirs.id)
    await send(a, {"type": "send", "content": "one"})
    await send(b, {"type": "send", "content": "two"})
    for socket, conversation in ((a, mine), (b, theirs)):
        frames = await receive_until(socket, "done")
        answer_id = frames[-1]["message_id"]
        saved = await row(answer_id)
        assert saved.conversation_id == conversation.id and saved.status == "done"
        assert saved.content == "".join(d["content"] for d in deltas_of(frames, answer_id))
        # Each socket heard only about its own conversation's messages.
        own = await database_sync_to_async(ids_in)(conversation)
        assert {f.get("message_id") or f["message"]["id"] for f in frames} <= own
        await socket.disconnect()


async def test_stop_ends_the_answer_and_keeps_the_partial_text(worker, alice, broker, long_answers):
    conversation = await new_conversation(alice)
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "Write a very long story"})
    _, answer = await receive(socket), await receive(socket)
    answer_id = answer["message"]["id"]
    first = await receive(socket)
    assert first["type"] == "delta"
    await send(socket, {"type": "stop", "message_id": answer_id})
    frames = [first] + await receive_until(socket, "done")
    assert frames[-1]["finish_reason"] == "cancelled"
    saved = await row(answer_id)
    assert saved.status == "cancelled" and not saved.stop_requested
    assert saved.content == "".join(d["content"] for d in deltas_of(frames, answer_id))
    assert 0 < saved.completion_tokens < 1900
    await socket.disconnect()


async def test_an_engine_crash_mid_answer_fails_the_message_keeps_the_text_and_recovers(
    worker, alice, broker, monkeypatch, settings, demo_model_path
):
    # Greedy: the demo model's answer never ends early, so the crash always lands mid-answer.
    settings.DEEPSEEK_MODELS = [{"name": "deepseek-chat", "path": str(demo_model_path), "max_context": 2048,
                                 "max_new_tokens": 96, "temperature": 0, "demo": True}]
    from transformers import Qwen2ForCausalLM

    real_forward = Qwen2ForCausalLM.forward
    calls = {"n": 0}

    def crashing_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:
            raise RuntimeError("simulated CUDA error")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(Qwen2ForCausalLM, "forward", crashing_forward)
    conversation = await new_conversation(alice)
    socket = await open_socket(alice, conversation.id)
    answer_id, frames = await ask(socket, "Hello")
    errors = [f for f in frames if f["type"] == "error"]
    assert len(errors) == 1 and errors[0]["message_id"] == answer_id and errors[0]["code"] == "generation_failed"
    assert "CUDA" not in errors[0]["message"]  # internals stay in the log
    assert frames[-1]["finish_reason"] == "error"
    saved = await row(answer_id)
    assert saved.status == "failed" and saved.error
    assert saved.content == "".join(d["content"] for d in deltas_of(frames, answer_id)) != ""
    assert saved.completion_tokens == 12
    # The engine restarts: the next answer completes.
    answer_id, frames = await ask(socket, "Are you back?")
    assert frames[-1]["finish_reason"] in ("stop", "length") and (await row(answer_id)).status == "done"
    await socket.disconnect()


async def test_a_model_that_cannot_load_fails_clearly_and_others_keep_working(worker, alice, broker, settings,
                                                                           demo_model_path, tmp_path):
    settings.DEEPSEEK_MODELS = [
        {"name": "deepseek-chat", "path": str(demo_model_path), "max_context": 2048, "max_new_tokens": 32},
        {"name": "broken", "path": str(tmp_path / "no-weights-here"), "queue": QUEUE},
    ]
    broken = await new_conversation(alice, model="broken")
    socket = await open_socket(alice, broken.id)
    answer_id, frames = await ask(socket, "Hello")
    [error] = [f for f in frames if f["type"] == "error"]
    # The model's name and an error id; its path stays in the worker's log (tests/app/test_error_ids.py).
    assert "broken" in error["message"] and "no-weights-here" not in error["message"]
    assert "(error id: " in error["message"]
    assert (await row(answer_id)).status == "failed"
    await socket.disconnect()

    working = await new_conversation(alice)
    socket = await open_socket(alice, working.id)
    answer_id, frames = await ask(socket, "Hello")
    assert frames[-1]["finish_reason"] in ("stop", "length") and (await row(answer_id)).status == "done"
    await socket.disconnect()


async def test_stop_reaches_the_worker_at_once_not_at_its_next_save(worker, alice, broker, long_answers, settings):
    # Saves (where the database flag is checked) are far apart: after its first one the worker saves
    # again only when this test is long over, and an answer that runs on to its end is `done`. So an
    # answer that ends cancelled heard the stop itself, not the flag at a save: a state, whatever the
    # machine's speed. (The writer's first save comes at once only when the clock has run longer than
    # the interval: its last save counts from 0.)
    settings.STREAM_FLUSH_SECONDS = min(600.0, time.monotonic() - 1)
    conversation = await new_conversation(alice)
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "Write a very long story"})
    _, answer = await receive(socket), await receive(socket)
    assert (await receive(socket))["type"] == "delta"
    await send(socket, {"type": "stop", "message_id": answer["message"]["id"]})
    frames = await receive_until(socket, "done", timeout=60)  # the bound only guards against hanging
    assert frames[-1]["finish_reason"] == "cancelled"
    saved = await row(answer["message"]["id"])
    assert saved.status == "cancelled" and saved.completion_tokens < 1900
    await socket.disconnect()


async def test_an_answer_nobody_watches_is_cancelled_after_the_timeout(worker, alice, broker, long_answers, settings):
    settings.ABANDONED_AFTER_SECONDS = 1.0
    conversation = await new_conversation(alice)
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "Write a very long story"})
    _, answer = await receive(socket), await receive(socket)
    assert (await receive(socket))["type"] == "delta"
    await socket.disconnect()  # the client goes away without a word
    deadline = time.monotonic() + 60  # only against hanging: the row's state is what is awaited
    saved = await row(answer["message"]["id"])
    while saved.status == "streaming" and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        saved = await row(answer["message"]["id"])
    assert saved.status == "cancelled" and saved.finish_reason == "cancelled"
    assert saved.content and saved.completion_tokens < 1900


async def test_a_conversation_is_routed_to_the_worker_holding_its_cache(worker, alice, broker):
    from chat.core.worker_routing import live_workers, private_queue, queue_for

    deadline = time.monotonic() + 60  # only against hanging
    while worker.hostname not in live_workers(QUEUE) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # the broker fixture cleared announcements; the next beat restores them
    conversation = await new_conversation(alice)
    assert queue_for(QUEUE, conversation.id) == private_queue(QUEUE, worker.hostname)
    socket = await open_socket(alice, conversation.id)
    answer_id, frames = await ask(socket, "Hello")
    assert frames[-1]["finish_reason"] in ("stop", "length") and (await row(answer_id)).status == "done"
    await socket.disconnect()


def _queued_answer_for(conversation: Conversation) -> Message:
    question = Message.objects.create(conversation=conversation, position=1, role="user", content="Hello?")
    return Message.objects.create(conversation=conversation, position=2, role="assistant", status="pending",
                                  parent=question)


async def test_answers_queued_for_a_worker_that_went_silent_are_taken_by_a_live_one(worker, alice, broker):
    from chat.conversations.actions import GENERATE_TASK
    from chat.core.worker_routing import LIVE_FOR_SECONDS, live_workers, private_queue

    conversation = await new_conversation(alice)
    answer = await database_sync_to_async(_queued_answer_for)(conversation)
    # Given an answer waiting on the private queue of a worker that has not beaten for a while…
    ghost_queue = private_queue(QUEUE, "ghost@nowhere")
    broker.zadd(f"deepseek:workers:{QUEUE}", {"ghost@nowhere": time.time() - LIVE_FOR_SECONDS - 1})
    await database_sync_to_async(celery_app.send_task)(GENERATE_TASK, args=[str(answer.id)], queue=ghost_queue)
    assert broker.llen(ghost_queue) == 1
    # …the live worker's next heartbeat moves it to the shared queue and answers it.
    deadline = time.monotonic() + 60  # only against hanging
    saved = await row(answer.id)
    while saved.status != "done" and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        saved = await row(answer.id)
    assert saved.status == "done" and saved.content
    assert broker.llen(ghost_queue) == 0 and "ghost@nowhere" not in live_workers(QUEUE)
    assert broker.zscore(f"deepseek:workers:{QUEUE}", "ghost@nowhere") is None


# ---- API options: seed and stop strings reach the engine --------------------------------------
def _queued_answer_with(user, seed: int | None, stop: list[str]) -> Message:
    conversation = Conversation.objects.create(user=user, model="deepseek-chat", seed=seed, stop=stop)
    return _queued_answer_for(conversation)


async def answer_with(user, seed: int | None = None, stop: list[str] | None = None) -> Message:
    """Queue one answer with options on its conversation (as the API does) and wait for it, watching
    the conversation as an open socket would (or the worker cancels an answer nobody waits for)."""
    from chat.conversations.actions import GENERATE_TASK
    from chat.conversations.liveness import keep_watching

    answer = await database_sync_to_async(_queued_answer_with)(user, seed, stop or [])
    watching = asyncio.create_task(keep_watching(answer.conversation_id))
    try:
        await database_sync_to_async(celery_app.send_task)(GENERATE_TASK, args=[str(answer.id)], queue=QUEUE)
        deadline = time.monotonic() + 60  # only against hanging
        saved = await row(answer.id)
        while saved.status in ("pending", "streaming") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            saved = await row(answer.id)
    finally:
        watching.cancel()
    return saved


@pytest.fixture
def sampled_answers(settings, demo_model_path):
    """Sampling at full temperature, so only the seed can make two answers alike."""
    settings.DEEPSEEK_MODELS = [{"name": "deepseek-chat", "path": str(demo_model_path), "max_context": 2048,
                                 "max_new_tokens": 40, "temperature": 1.0, "demo": True}]


async def test_it_writes_the_same_answer_twice_for_the_same_seed(worker, alice, broker, sampled_answers):
    first, second = await answer_with(alice, seed=1234), await answer_with(alice, seed=1234)
    other = await answer_with(alice, seed=99)
    assert first.status == second.status == other.status == "done"
    assert first.content and first.content == second.content
    assert first.completion_tokens == second.completion_tokens
    assert other.content != first.content  # the seed, not chance, made them alike


async def test_it_ends_the_answer_before_a_stop_string(worker, alice, broker, sampled_answers):
    # Given the answer a seed gives without stop strings…
    full = await answer_with(alice, seed=1234)
    assert full.status == "done" and len(full.content) > 12
    middle = len(full.content) // 2
    stop = next(piece for piece in (full.content[i:i + 3] for i in range(middle, len(full.content) - 2))
                if piece.strip())
    # …the same seed with one of its later pieces as a stop string ends just before that piece.
    cut = await answer_with(alice, seed=1234, stop=["never-appears-here", stop])
    assert cut.status == "done" and cut.finish_reason == "stop"
    assert cut.content == full.content[: full.content.find(stop)]
    assert stop not in cut.content and cut.completion_tokens < full.completion_tokens
