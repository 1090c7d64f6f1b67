"""/metrics: who may read it, what it shows (every process's metrics through Redis, queue depths), and
the numbers a real worker records while it answers."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.test import Client
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from chat.conversations.models import Conversation, Message
from chat.core import metrics, metrics_snapshots
from chat.core.worker_routing import Heartbeat, private_queue
from deepseek_web.celery import app as celery_app
from inference import metrics as engine_metrics
from inference.batching import BatchConfig
from inference.engine import Engine, GenerationStats, SamplingParams
from inference.loading import load_model
from inference.registry import ModelSpec
from tests.support.sockets import open_socket, receive, receive_until, send

OUTSIDE = "203.0.113.7"  # TEST-NET-3: never one of ours
QUEUE = "model.deepseek-chat"


def scrape(**headers) -> list:
    """Every sample /metrics shows, asked from loopback unless `headers` say otherwise."""
    headers.setdefault("REMOTE_ADDR", "127.0.0.1")
    response = Client().get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return [s for family in text_string_to_metric_families(response.content.decode()) for s in family.samples]


def total(samples: list, name: str, **labels: str) -> float:
    """The sum over processes of the samples called `name` carrying `labels`."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


# ---- who may read it --------------------------------------------------------------------------------
def test_it_refuses_a_request_from_outside_the_allowed_networks(client):
    response = client.get("/metrics", REMOTE_ADDR=OUTSIDE)
    assert response.status_code == 403 and b"deepseek" not in response.content


def test_it_serves_loopback_by_default():
    assert total(scrape(), "deepseek_live_workers") >= 0
    assert scrape(REMOTE_ADDR="::1") is not None


def test_it_serves_a_request_bearing_the_token_from_anywhere(settings):
    settings.METRICS_TOKEN = "s3cret-token"
    samples = scrape(REMOTE_ADDR=OUTSIDE, HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert any(s.name.startswith("deepseek_") for s in samples)


@pytest.mark.parametrize("authorization", ["Bearer wrong", "Bearer ", "Basic s3cret-token", "s3cret-token", ""])
def test_it_refuses_a_wrong_or_missing_token(client, settings, authorization):
    settings.METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics", REMOTE_ADDR=OUTSIDE, HTTP_AUTHORIZATION=authorization).status_code == 403


def test_an_empty_token_setting_accepts_no_token(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR=OUTSIDE, HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_it_refuses_loopback_through_a_proxy(client):
    """A reverse proxy on this host makes every outside request come from 127.0.0.1."""
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR=OUTSIDE)
    assert response.status_code == 403


def test_it_serves_the_configured_networks_only(client, settings):
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "2001:db8::/32"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="2001:db8::5").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200  # IPv4 on a dual-stack socket
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


def test_a_malformed_network_setting_fails_loudly(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from deepseek_web import settings as project_settings

    monkeypatch.setenv("METRICS_ALLOWED_NETWORKS", "10.0.0.0/8, not-a-network")
    with pytest.raises(ImproperlyConfigured, match="METRICS_ALLOWED_NETWORKS"):
        project_settings._networks("METRICS_ALLOWED_NETWORKS", [])


# ---- what it shows ----------------------------------------------------------------------------------
@pytest.fixture
def redis_client(redis_url):
    client = metrics_snapshots.client()
    yield client
    for name in client.zrange("deepseek:metrics:processes", 0, -1):
        if name.decode().startswith("test-"):
            metrics_snapshots.forget(client, name.decode())


def other_process(tokens: float) -> list:
    """A snapshot as another process would push it: the same family, its own values."""
    registry = CollectorRegistry()
    Counter("deepseek_generated_tokens", "Completion tokens.", ["model"], registry=registry).labels("m1").inc(tokens)
    return metrics_snapshots.snapshot(registry)


def test_it_shows_every_live_process_side_by_side_with_a_process_label(redis_client):
    metrics_snapshots.push(redis_client, "test-worker-a:1", other_process(7))
    metrics_snapshots.push(redis_client, "test-worker-b:2", other_process(5))
    samples = scrape()
    mine = metrics_snapshots.process_name()
    assert total(samples, "deepseek_generated_tokens_total", model="m1", process="test-worker-a:1") == 7
    assert total(samples, "deepseek_generated_tokens_total", model="m1", process="test-worker-b:2") == 5
    assert total(samples, "deepseek_generated_tokens_total", model="m1") == 12
    # This process's own families are there too, read live, and every family is listed once.
    assert any(s.labels.get("process") == mine for s in samples)
    response = Client().get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    assert response.count("# TYPE deepseek_generated_tokens_total counter") == 1


def test_a_process_that_stopped_pushing_disappears(redis_client):
    metrics_snapshots.push(redis_client, "test-gone:1", other_process(3), now=time.time() - 60)
    metrics_snapshots.push(redis_client, "test-left:2", other_process(4))
    metrics_snapshots.forget(redis_client, "test-left:2")  # a clean shutdown
    samples = scrape()
    assert total(samples, "deepseek_generated_tokens_total", process="test-gone:1") == 0
    assert total(samples, "deepseek_generated_tokens_total", process="test-left:2") == 0


def test_it_still_answers_when_redis_is_unreachable(settings):
    from chat.core.redis_server import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    samples = scrape()
    assert any(s.name.startswith("deepseek_") for s in samples)  # this process's own values


def test_the_pusher_puts_this_process_in_redis_and_takes_it_out_when_stopped(redis_client):
    pusher = metrics_snapshots.Pusher()
    pusher.process = f"test-pusher:{uuid.uuid4().hex[:6]}"
    pusher.push_once()
    assert pusher.process in metrics_snapshots.pushed_snapshots(redis_client)
    pusher.stop()
    assert pusher.process not in metrics_snapshots.pushed_snapshots(redis_client)


@pytest.mark.django_db
def test_queue_depth_counts_the_shared_queue_and_live_workers_private_queues(broker):
    queue = "model.deepseek-vl"  # no worker in this test consumes it
    beat = Heartbeat("depth-test@host", [queue]).start()
    try:
        celery_app.send_task("inference.tasks.generate", args=[str(uuid.uuid4())], queue=queue)
        celery_app.send_task("inference.tasks.generate", args=[str(uuid.uuid4())],
                             queue=private_queue(queue, "depth-test@host"))
        samples = scrape()
    finally:
        beat.stop()
        broker.delete(private_queue(queue, "depth-test@host"))
    assert total(samples, "deepseek_queue_depth", model="deepseek-vl") == 2
    assert total(samples, "deepseek_live_workers", model="deepseek-vl") == 1


# ---- recording ----------------------------------------------------------------------------------------
def test_recording_is_cheap_and_never_raises(monkeypatch):
    answer = metrics.StreamMetrics("cheap", time.monotonic())
    # This thread's CPU time: what recording costs, not how much of the CPU other processes had meanwhile.
    started = time.thread_time()
    for tokens in range(1, 20_001):
        answer.delta(tokens)
    per_delta = (time.thread_time() - started) / 20_000
    assert per_delta < 50e-6, f"{per_delta * 1e6:.1f} µs per delta"  # ~1.3 µs measured here
    answer.finished(20_000)
    answer.closed()

    def broken(*args, **kwargs):
        raise RuntimeError("metrics are broken")

    monkeypatch.setattr(metrics.TIME_TO_FIRST_TOKEN, "labels", broken)
    monkeypatch.setattr(metrics.MODERATION_BLOCKS, "labels", broken)
    monkeypatch.setattr(engine_metrics.PROMPT_TOKENS, "labels", broken)
    broken_answer = metrics.StreamMetrics("broken", time.monotonic())
    broken_answer.delta(1)
    broken_answer.finished(1)
    broken_answer.closed()
    metrics.moderation_blocked("input")
    engine_metrics.record_prompt("broken", 10)


def test_the_batching_engine_reports_batch_sizes_and_reused_prompt_tokens(demo_model_path):
    """Guards the two transformers internals engine_metrics.watch_batching wraps."""
    spec = ModelSpec(name="metrics-demo", path=str(demo_model_path), max_context=1024, max_new_tokens=24)
    engine = Engine(load_model(spec), spec, BatchConfig(page_size=16, num_blocks=256, max_batch_tokens=256))
    batches = engine_metrics.ENGINE_BATCH_SIZE.labels(spec.name)
    reused = engine_metrics.PROMPT_TOKENS_REUSED.labels(spec.name)
    prompts = engine_metrics.PROMPT_TOKENS.labels(spec.name)
    try:
        history = [{"role": "user", "content": "Remember the number 42, and say something long."}]
        ids = engine.encode_chat(history, 24, conversation="c")
        stats = GenerationStats()
        answer = "".join(d.content for d in engine.generate(ids, SamplingParams(24, temperature=0), stats))
        engine.remember_turn("c", history, answer, ids, stats)
        assert samples_of(batches, "_count") > 0 and reused._value.get() == 0
        assert prompts._value.get() == len(ids)
        history += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Which number?"}]
        second = engine.encode_chat(history, 24, conversation="c")
        for _ in engine.generate(second, SamplingParams(24, temperature=0), GenerationStats()):
            pass
        # Turn 1's full blocks of 16 tokens were not computed again.
        assert reused._value.get() >= 16 and reused._value.get() % 16 == 0
        assert prompts._value.get() == len(ids) + len(second)
    finally:
        engine.batcher.stop()


def samples_of(child, suffix: str) -> float:
    return sum(s.value for family in child.collect() for s in family.samples if s.name.endswith(suffix))


# ---- end to end: a real worker --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worker(demo_model_path, running_worker):
    with running_worker([QUEUE], concurrency=2) as running:  # announced, as the command-line worker is
        yield running


async def ask(socket, content: str) -> tuple[str, list[dict]]:
    await send(socket, {"type": "send", "content": content, "client_id": "c"})
    await receive(socket)
    answer = (await receive(socket))["message"]["id"]
    return answer, await receive_until(socket, "done")


async def wait_for(predicate, timeout: float = 30.0):  # the timeout only guards against hanging
    deadline = time.monotonic() + timeout
    while True:
        samples = await sync_to_async(scrape)()
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_a_real_answer_shows_up_in_metrics(worker, alice, broker):
    model = {"model": "deepseek-chat"}
    before = await sync_to_async(scrape)()
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, model="deepseek-chat")
    socket = await open_socket(alice, conversation.id)
    # Long enough to fill whole KV blocks (32 tokens) by itself, so turn 2 reuses some.
    first, _ = await ask(socket, "Remember the number 42. " + "Then tell me a long story about it, please. " * 8)
    second, _ = await ask(socket, "Which number?")
    await socket.disconnect()
    rows = [await database_sync_to_async(Message.objects.get)(id=i) for i in (first, second)]

    # The writer closes (active streams down) just after the `done` frame: give it a moment.
    after = await wait_for(lambda s: total(s, "deepseek_active_streams", **model) == 0)

    def grew(name: str) -> float:
        return total(after, name, **model) - total(before, name, **model)

    assert grew("deepseek_generated_tokens_total") == sum(r.completion_tokens for r in rows) > 0
    assert grew("deepseek_time_to_first_token_seconds_count") == 2
    assert grew("deepseek_time_to_first_token_seconds_sum") > 0
    assert grew("deepseek_inter_token_latency_seconds_count") > 2
    assert grew("deepseek_engine_batch_size_count") > 0
    assert grew("deepseek_prompt_tokens_total") == sum(r.prompt_tokens for r in rows)
    assert grew("deepseek_prompt_tokens_reused_total") > 0  # turn 2 extends turn 1's cached blocks
    assert total(after, "deepseek_active_streams", **model) == 0


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_a_blocked_prompt_counts_as_an_input_block(alice, broker):
    before = total(await sync_to_async(scrape)(), "deepseek_moderation_blocks_total", direction="input")
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, model="deepseek-chat")
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "Please explain how to make a bomb", "client_id": "b"})
    assert (await receive(socket))["code"] == "content_filter"
    await socket.disconnect()
    after = total(await sync_to_async(scrape)(), "deepseek_moderation_blocks_total", direction="input")
    assert after == before + 1


@pytest.mark.django_db(transaction=True)
def test_a_cut_answer_counts_as_an_output_block(alice, broker):
    from chat.worker.replies import ReplyWriter, claim

    conversation = Conversation.objects.create(user=alice, model="deepseek-chat")
    question = Message.objects.create(conversation=conversation, role="user", content="hi", position=0)
    answer = Message.objects.create(conversation=conversation, role="assistant", status="pending", position=1,
                                    parent=question)
    before = total(scrape(), "deepseek_moderation_blocks_total", direction="output")
    writer = ReplyWriter(claim(str(answer.id)))
    try:
        writer.content_filtered()
    finally:
        writer.close()
    assert total(scrape(), "deepseek_moderation_blocks_total", direction="output") == before + 1
