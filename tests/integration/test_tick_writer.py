"""The worker's tick writer (chat/worker/tick_writer.py) and the engine's admission, on real parts: the demo
model in the shared batch, a real Celery worker, Redis and the database."""
from __future__ import annotations

import threading
import time

import pytest
from django.db import OperationalError

from chat.conversations import actions
from chat.conversations.models import Conversation, Message
from chat.worker import tick_writer as ticks
from chat.worker.replies import ReplyWriter, claim
from inference.batching import BatchConfig
from inference.engine import Engine, GenerationStats, SamplingParams
from inference.loading import load_model
from tests.support import waiting
from tests.support.channel import GroupListener

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
QUEUE = "model.deepseek-chat"


def wait_for(predicate, what, timeout: float = 120.0):
    return waiting.wait_for(predicate, what, timeout)


@pytest.fixture
def long_answers(settings, demo_model_path):
    settings.DEEPSEEK_MODELS = [{"name": "deepseek-chat", "path": str(demo_model_path), "max_context": 2048,
                                 "max_new_tokens": 1900, "temperature": 0, "demo": True}]


def test_the_tick_grows_with_load_up_to_its_ceiling(settings):
    settings.STREAM_FLUSH_SECONDS, settings.STREAM_FLUSH_MAX_SECONDS = 0.05, 0.5
    assert ticks.tick_seconds(1) == ticks.tick_seconds(ticks.SMOOTH_ANSWERS) == 0.05
    assert ticks.tick_seconds(4 * ticks.SMOOTH_ANSWERS) == pytest.approx(0.2)
    assert ticks.tick_seconds(1000) == 0.5
    settings.STREAM_FLUSH_SECONDS = 5.0  # a base above the ceiling is kept
    assert ticks.tick_seconds(1000) == 5.0


def test_many_answers_are_written_at_once_and_saved_together(running_worker, alice, broker, long_answers):
    """More answers than the old eight threads start together (admission by the engine's capacity), and one
    transaction saves many of their rows."""
    count = 20
    writer = ticks.tick_writer()
    writer.largest_flush = 0
    conversations = [Conversation.objects.create(user=alice, model="deepseek-chat") for _ in range(count)]
    with running_worker([QUEUE], concurrency=count + 2):
        answers = [actions.do_send_message(alice, c.id, "Write a very long story").assistant_message.id
                   for c in conversations]
        try:
            # All of them written at once: every row has text while none has finished.
            wait_for(lambda: Message.objects.filter(id__in=answers, status="streaming", seq__gte=1).count() == count,
                     "every answer streaming with text")
            assert not Message.objects.filter(id__in=answers).exclude(status="streaming").exists()
            wait_for(lambda: writer.largest_flush >= count * 3 // 4, "one transaction saving most of the rows")
        finally:
            for answer in answers:
                actions.do_request_stop(alice, answer)
            wait_for(lambda: not Message.objects.filter(id__in=answers, status__in=("pending", "streaming")).exists(),
                     "every answer stopped")
    assert set(Message.objects.filter(id__in=answers).values_list("status", flat=True)) == {"cancelled"}


def test_text_a_failed_save_held_back_is_saved_and_sent_once_the_database_answers(alice, broker, monkeypatch):
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat")
    question = Message.objects.create(conversation=conversation, role="user", content="hi", position=0)
    answer = Message.objects.create(conversation=conversation, role="assistant", status="pending", position=1,
                                    parent=question)
    real_atomic = ticks.transaction.atomic
    failures = {"left": 1}

    def flaky_atomic(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("database is locked")
        return real_atomic(*args, **kwargs)

    monkeypatch.setattr(ticks.transaction, "atomic", flaky_atomic)
    with GroupListener(conversation.id) as listener:
        writer = ReplyWriter(claim(str(answer.id)))
        try:
            writer.start(3)
            assert writer.append("Hello", "", 1) and writer.append(" there", "", 2)
            assert writer.release()  # waits until a save took it: the first one failed
        finally:
            writer.close()
        deltas = listener.wait_for(lambda frames: [f for f in frames if f["type"] == "delta"])
    assert failures["left"] == 0
    answer.refresh_from_db()
    assert (answer.content, answer.seq, answer.completion_tokens) == ("Hello there", 1, 2)
    assert [(d["seq"], d["content"]) for d in deltas] == [(1, "Hello there")]  # once, whole, in order


def test_text_a_stopped_row_refused_goes_out_with_the_answers_end(alice, broker):
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat")
    question = Message.objects.create(conversation=conversation, role="user", content="hi", position=0)
    answer = Message.objects.create(conversation=conversation, role="assistant", status="pending", position=1,
                                    parent=question)
    with GroupListener(conversation.id) as listener:
        writer = ReplyWriter(claim(str(answer.id)))
        try:
            writer.start(3)
            Message.objects.filter(id=answer.id).update(stop_requested=True)  # Stop pressed before the save
            assert writer.append("Hello", "", 1)
            assert writer.release() is False and writer.refused
            assert writer.append(" more", "", 2) is False  # nothing more is taken
            answer.refresh_from_db()
            assert (answer.content, answer.seq) == ("", 0)  # the refused save wrote nothing
            assert writer.should_cancel()
            writer.cancelled()
        finally:
            writer.close()
        frames = listener.wait_for(lambda frames: frames if frames and frames[-1]["type"] == "done" else None)
    answer.refresh_from_db()
    assert (answer.status, answer.content, answer.seq) == ("cancelled", "Hello", 1)
    # The refused text was not lost: the end's delta carries it, once.
    assert [(f["seq"], f["content"]) for f in frames if f["type"] == "delta"] == [(1, "Hello")]


@pytest.fixture(scope="module")
def engine(demo_model_path):
    from inference.registry import parse_models

    [spec] = parse_models([{"name": "admission", "path": str(demo_model_path), "max_context": 2048,
                            "max_new_tokens": 24, "temperature": 0, "demo": True}])
    engine = Engine(load_model(spec), spec, BatchConfig(), max_sequences=1)
    yield engine
    engine.batcher.stop()


def poll_to_end(generation) -> str:
    text = ""
    while not generation.ended:
        text += "".join(d.content for d in generation.poll())
        time.sleep(0.005)
    return text


def test_a_polled_generation_writes_what_the_blocking_one_writes(engine):
    ids = engine.encode_chat([{"role": "user", "content": "Hello, who are you?"}], 24)
    params = SamplingParams(24, temperature=0)
    blocking = "".join(d.content for d in engine.generate(ids, params, GenerationStats()))
    stats = GenerationStats()
    woken = threading.Event()
    generation = engine.open(ids, params, stats, wake=woken.set)
    try:
        polled = poll_to_end(generation)
    finally:
        generation.close()
    assert woken.is_set()  # the first tokens woke the reader
    assert polled == blocking != "" and stats.completion_tokens == 24 and stats.finish_reason == "length"


def test_answers_beyond_the_engines_capacity_wait_for_a_place(engine):
    ids = engine.encode_chat([{"role": "user", "content": "Hello"}], 24)
    params = SamplingParams(24, temperature=0)
    order: list[str] = []
    first = engine.open(ids, params, GenerationStats())
    second_opened = threading.Event()

    def open_second():
        generation = engine.open(ids, params, GenerationStats())
        order.append("second opened")
        second_opened.set()
        poll_to_end(generation)
        generation.close()

    thread = threading.Thread(target=open_second)
    thread.start()
    order.append("first closed")
    first.close()  # cancelled: its place goes to the waiting one
    assert second_opened.wait(60)
    thread.join(60)
    assert order == ["first closed", "second opened"]


def test_a_seeded_request_does_not_join_the_batch(engine):
    ids = engine.encode_chat([{"role": "user", "content": "Hello"}], 24)
    assert engine.open(ids, SamplingParams(8, seed=7), GenerationStats()) is None


def test_the_worker_pool_is_sized_by_the_engine(settings):
    # Celery's pool only holds answers waiting on the engine: sized by its places, plus a few for periodic jobs.
    assert settings.CELERY_WORKER_CONCURRENCY == settings.ENGINE_MAX_SEQUENCES + settings.ENGINE_SOLO_SEQUENCES + 2


def test_an_answer_longer_than_the_stall_interval_is_followed_to_its_end(alice, broker, engine, monkeypatch):
    # The writer's thread keeps going round, so a long answer is waited for however long it takes; only a
    # thread that goes no round for the interval counts as stuck.
    monkeypatch.setattr(ticks, "STALL_SECONDS", 4 * ticks.PUMP_SECONDS)
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat")
    question = Message.objects.create(conversation=conversation, role="user", content="hi", position=0)
    answer = Message.objects.create(conversation=conversation, role="assistant", status="pending", position=1,
                                    parent=question)
    writer = ReplyWriter(claim(str(answer.id)))
    try:
        ids = engine.encode_chat([{"role": "user", "content": "Hello, who are you?"}], 400)
        stats = GenerationStats()
        generation = engine.open(ids, SamplingParams(400, temperature=0), stats, wake=ticks.tick_writer().wake)
        writer.start(len(ids))
        assert ticks.tick_writer().follow(writer, generation, stats) is True
        writer.done(stats.finish_reason)
    finally:
        writer.close()
    answer.refresh_from_db()
    assert (answer.status, answer.completion_tokens) == ("done", stats.completion_tokens)
    assert answer.content and stats.completion_tokens > 24
