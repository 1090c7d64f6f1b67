"""Models served by another OpenAI-compatible server: a real fake one on loopback plays scripted streams."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.conversations.models import Conversation, Message
from chat.core.served_models import get_model
from chat.worker import tasks
from deepseek_web.celery import app as celery_app
from inference.engine import Delta, GenerationStats, SamplingParams
from inference.prompt_check import message_tokens
from inference.registry import parse_models
from inference.upstream import UpstreamEngine, UpstreamError, chat_messages, image_mime

Reply = Callable[[BaseHTTPRequestHandler], None]


# ---- the fake upstream -------------------------------------------------------------------------
class FakeUpstream:
    """An OpenAI-compatible server on a free loopback port: it records each request and answers
    with the scripted `reply`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply: Reply = stream(chunk(content="Hi"), chunk(finish="stop"), "data: [DONE]")
        self.hung_up = threading.Event()  # the client closed a stream the server was still writing
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.fake = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def request(self) -> dict[str, Any]:
        [only] = self.requests
        return only


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: a streamed body ends when the server closes the connection, as SSE servers' do.
    def do_POST(self) -> None:
        fake: FakeUpstream = self.server.fake  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fake.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
        fake.reply(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def chunk(content: str | None = None, reasoning: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {k: v for k, v in (("content", content), ("reasoning_content", reasoning)) if v is not None}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "served",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "served", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


def _begin_stream(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()


def stream(*items: dict[str, Any] | str | float) -> Reply:
    """An SSE reply: a dict is sent as a `data:` chunk, a str as a raw line, a number is a pause."""
    def play(handler: BaseHTTPRequestHandler) -> None:
        _begin_stream(handler)
        for item in items:
            if isinstance(item, (int, float)):
                time.sleep(item)
                continue
            line = item if isinstance(item, str) else f"data: {json.dumps(item)}"
            handler.wfile.write(f"{line}\n\n".encode())
    return play


def refuse(status: int, body: dict[str, Any] | str) -> Reply:
    def play(handler: BaseHTTPRequestHandler) -> None:
        raw = (body if isinstance(body, str) else json.dumps(body)).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)
    return play


def endless(fake: FakeUpstream, every: float = 0.02, give_up_after: float = 120.0) -> Reply:
    """Streams tokens until the client hangs up (or, if it never does, for `give_up_after` seconds)."""
    def play(handler: BaseHTTPRequestHandler) -> None:
        _begin_stream(handler)
        ends = time.monotonic() + give_up_after
        try:
            while time.monotonic() < ends:
                handler.wfile.write(f"data: {json.dumps(chunk(content='la '))}\n\n".encode())
                time.sleep(every)
        except OSError:  # broken pipe or reset: the client closed the connection
            fake.hung_up.set()
    return play


@pytest.fixture
def upstream():
    fake = FakeUpstream()
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def engine_for(fake: FakeUpstream, **entry: Any) -> UpstreamEngine:
    [spec] = parse_models([{"name": "remote", "backend": "openai-compatible", "base_url": fake.url, **entry}])
    return UpstreamEngine(spec)


def run(engine: UpstreamEngine, history: list[dict[str, Any]] | None = None,
        params: SamplingParams | None = None) -> tuple[list[Delta], GenerationStats]:
    stats = GenerationStats()
    deltas = list(engine.generate(history or [{"role": "user", "content": "Hello?"}],
                                  params or SamplingParams(max_new_tokens=64), stats))
    return deltas, stats


def text_of(deltas: list[Delta]) -> tuple[str, str]:
    return "".join(d.content for d in deltas), "".join(d.reasoning for d in deltas)


# ---- streaming -----------------------------------------------------------------------------------
def test_it_streams_reasoning_and_content_and_takes_the_usage(upstream):
    upstream.reply = stream(chunk(reasoning="Let me"), ": keep-alive", chunk(reasoning=" think."),
                            chunk(content="Hello"), chunk(content=" world", finish="stop"), usage(12, 5),
                            "data: [DONE]")
    deltas, stats = run(engine_for(upstream))
    assert text_of(deltas) == ("Hello world", "Let me think.")
    assert (stats.prompt_tokens, stats.completion_tokens, stats.finish_reason) == (12, 5, "stop")
    # A keep-alive comes through as an empty delta: a chance for the caller to stop.
    assert sum(1 for d in deltas if not d.content and not d.reasoning) == 1


def test_it_sends_one_streamed_chat_completion_request(upstream):
    run(engine_for(upstream), [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}],
        SamplingParams(max_new_tokens=64, temperature=0.3, top_p=0.9))
    assert upstream.request["path"] == "/v1/chat/completions"
    assert upstream.request["body"] == {
        "model": "remote",  # the entry's name, when it names no upstream_model
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}],
        "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": 64, "temperature": 0.3, "top_p": 0.9,
    }
    assert "authorization" not in {k.lower() for k in upstream.request["headers"]}


def test_it_forwards_stop_strings_seed_max_tokens_and_the_upstream_model_name(upstream):
    run(engine_for(upstream, upstream_model="deepseek-ai/DeepSeek-V3"),
        params=SamplingParams(max_new_tokens=33, temperature=0.0, top_p=1.0, seed=7, stop=("END", "\n\n")))
    body = upstream.request["body"]
    assert (body["model"], body["max_tokens"], body["seed"], body["stop"]) == ("deepseek-ai/DeepSeek-V3", 33, 7,
                                                                              ["END", "\n\n"])
    assert body["temperature"] == 0.0


def test_it_counts_chunks_when_the_upstream_sends_no_usage(upstream):
    # llama.cpp-style: no usage chunk, and the stream simply ends after the finish reason.
    upstream.reply = stream(chunk(content="one"), chunk(content=" two"), chunk(content=" three", finish="length"))
    deltas, stats = run(engine_for(upstream))
    assert text_of(deltas)[0] == "one two three"
    assert (stats.prompt_tokens, stats.completion_tokens, stats.finish_reason) == (0, 3, "length")


@pytest.mark.parametrize("upstream_reason, ours", [("stop", "stop"), ("length", "length"),
                                                   ("content_filter", "content_filter"), ("tool_calls", "stop"),
                                                   ("eos", "stop"), (None, "stop")])
def test_it_maps_the_finish_reason(upstream, upstream_reason, ours):
    upstream.reply = stream(chunk(content="x"), chunk(finish=upstream_reason), "data: [DONE]")
    assert run(engine_for(upstream))[1].finish_reason == ours


def test_closing_the_stream_hangs_up_on_the_upstream_at_once(upstream):
    upstream.reply = endless(upstream)
    answer = engine_for(upstream).generate([{"role": "user", "content": "Go on forever"}],
                                           SamplingParams(max_new_tokens=10_000), GenerationStats())
    assert [next(answer).content for _ in range(3)] == ["la "] * 3
    answer.close()  # what the worker does when Stop is pressed
    # While `answer` is held nothing else closes its connection (and the upstream would write on for two
    # minutes): a hang-up the upstream sees now is close()'s doing. The bound only guards against hanging.
    assert upstream.hung_up.wait(30), "the upstream kept writing to a closed answer"


# ---- images --------------------------------------------------------------------------------------
def _image(kind: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 3), "red").save(out, format=kind)
    return out.getvalue()


@pytest.mark.parametrize("kind, mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                        ("GIF", "image/gif")])
def test_it_knows_an_image_type_by_its_first_bytes(kind, mime):
    assert image_mime(_image(kind)) == mime


def test_it_refuses_bytes_that_are_no_image():
    with pytest.raises(UpstreamError, match="not a PNG, JPEG, WEBP or GIF"):
        chat_messages([{"role": "user", "content": "look", "images": [b"PK\x03\x04 a zip"]}])


def test_it_sends_images_as_data_url_parts(upstream):
    png, jpeg = _image("PNG"), _image("JPEG")
    run(engine_for(upstream, vision=True), [
        {"role": "user", "content": "What is this?", "images": [png, jpeg]},
        {"role": "assistant", "content": "A red square."},
        {"role": "user", "content": "Sure?", "images": []},
    ])
    first, reply, second = upstream.request["body"]["messages"]
    assert first["role"] == "user"
    text, *images = first["content"]
    assert text == {"type": "text", "text": "What is this?"}
    urls = [part["image_url"]["url"] for part in images]
    assert [part["type"] for part in images] == ["image_url", "image_url"]
    assert urls[0].startswith("data:image/png;base64,") and urls[1].startswith("data:image/jpeg;base64,")
    assert [base64.b64decode(url.split(",", 1)[1]) for url in urls] == [png, jpeg]
    assert reply == {"role": "assistant", "content": "A red square."}
    assert second == {"role": "user", "content": "Sure?"}  # no images: plain text, as text-only servers expect


# ---- keys ----------------------------------------------------------------------------------------
def test_it_sends_the_key_from_the_named_environment_variable(upstream, monkeypatch):
    monkeypatch.setenv("UPSTREAM_TEST_KEY", "sk-first")
    engine = engine_for(upstream, api_key_env="UPSTREAM_TEST_KEY")
    run(engine)
    monkeypatch.setenv("UPSTREAM_TEST_KEY", "sk-rotated")  # read at every request: no restart needed
    run(engine)
    assert [r["headers"]["Authorization"] for r in upstream.requests] == ["Bearer sk-first", "Bearer sk-rotated"]


def test_it_refuses_to_ask_without_the_key_it_was_told_to_send(upstream, monkeypatch):
    monkeypatch.delenv("UPSTREAM_TEST_KEY", raising=False)
    with pytest.raises(UpstreamError, match="UPSTREAM_TEST_KEY"):
        run(engine_for(upstream, api_key_env="UPSTREAM_TEST_KEY"))
    assert upstream.requests == []


# ---- failures ------------------------------------------------------------------------------------
@pytest.mark.parametrize("status, body, expected", [
    (401, {"error": {"message": "Incorrect API key provided: sk-secret-123", "type": "invalid_request_error",
                     "code": "invalid_api_key"}}, "401 Unauthorized: Incorrect API key provided: [key]"),
    (429, {"error": {"message": "Rate limit reached for requests", "type": "rate_limit_error"}},
     "429 Too Many Requests: Rate limit reached for requests"),
    (500, {"object": "error", "message": "The engine died", "type": "InternalServerError", "code": 500},
     "500 Internal Server Error: The engine died"),
    (502, "<html><body>Bad gateway</body></html>", "502 Bad Gateway: <html><body>Bad gateway</body></html>"),
])
def test_it_names_the_status_and_message_of_a_refusal_without_the_key(upstream, monkeypatch, status, body, expected):
    monkeypatch.setenv("UPSTREAM_TEST_KEY", "sk-secret-123")
    upstream.reply = refuse(status, body)
    with pytest.raises(UpstreamError) as failed:
        run(engine_for(upstream, api_key_env="UPSTREAM_TEST_KEY"))
    assert str(failed.value) == f"The upstream server for remote answered {expected}"
    assert failed.value.status == status and "sk-secret-123" not in str(failed.value)


def test_an_error_chunk_mid_stream_fails_after_the_text_so_far(upstream):
    upstream.reply = stream(chunk(content="Half an ans"),
                            {"error": {"message": "CUDA out of memory", "type": "server_error", "code": None}})
    answer = engine_for(upstream).generate([{"role": "user", "content": "Hi"}], SamplingParams(max_new_tokens=64),
                                           GenerationStats())
    assert next(answer).content == "Half an ans"
    with pytest.raises(UpstreamError, match="failed mid-answer: CUDA out of memory"):
        next(answer)


def test_a_stream_cut_before_its_end_fails(upstream):
    upstream.reply = stream(chunk(content="Hel"))
    with pytest.raises(UpstreamError, match="ended the stream before the answer was finished"):
        run(engine_for(upstream))


def test_a_chunk_that_is_not_json_fails(upstream):
    upstream.reply = stream("data: {not json")
    with pytest.raises(UpstreamError, match="not a JSON object"):
        run(engine_for(upstream))


def test_an_upstream_nobody_listens_on_fails_clearly():
    with socket.socket() as probe:  # a port that was free a moment ago, and now is closed again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    [spec] = parse_models([{"name": "remote", "backend": "openai-compatible", "base_url": f"http://127.0.0.1:{port}/v1"}])
    with pytest.raises(UpstreamError, match=r"^The upstream server for remote cannot be reached \(") as failed:
        run(UpstreamEngine(spec))
    assert str(port) not in str(failed.value)  # the address is for the operator's log, not the asker


def test_a_silent_upstream_times_out(upstream):
    silence = 30.0
    upstream.reply = stream(silence)  # headers, then nothing
    started = time.monotonic()
    with pytest.raises(UpstreamError, match=r"did not answer within 0.5 s"):
        run(engine_for(upstream, timeout=0.5))
    assert time.monotonic() - started < silence  # it gave up while the upstream was still silent


def test_an_upstream_model_has_no_tokenizer_here():
    [spec] = parse_models([{"name": "remote", "backend": "openai-compatible", "base_url": "http://10.0.0.5:8000/v1"}])
    assert message_tokens(spec, "Hello") is None  # the web tier skips its size check; the upstream has its own


def test_a_worker_loads_nothing_for_an_upstream_model_and_lets_it_go_at_shutdown(upstream):
    [spec] = parse_models([{"name": "remote", "backend": "openai-compatible", "base_url": upstream.url}])
    engine = tasks.engine_for(spec)
    assert isinstance(engine, UpstreamEngine) and tasks.engine_for(spec) is engine
    tasks.stop_engines()
    assert spec not in tasks._engines
    assert tasks.engine_for(spec) is not engine  # asked again: a fresh connection pool


# ---- through the real Celery task ------------------------------------------------------------------
def celery_path(test: Callable[..., Any]) -> Callable[..., Any]:
    return pytest.mark.integration(pytest.mark.django_db(transaction=True)(test))


@pytest.fixture
def upstream_model(settings, upstream):
    settings.DEEPSEEK_MODELS = [{"name": "remote-chat", "backend": "openai-compatible", "base_url": upstream.url,
                                 "upstream_model": "served", "max_new_tokens": 64}]
    return get_model("remote-chat")


@pytest.fixture
def upstream_worker(upstream_model, running_worker):
    # Announced, as the CLI worker does: it joins the model's routing.
    with running_worker([upstream_model.celery_queue], concurrency=2) as running:
        yield running


def _queued_answer(user) -> Message:
    conversation = Conversation.objects.create(user=user, model="remote-chat", seed=5, stop=["STOP"])
    question = Message.objects.create(conversation=conversation, position=1, role="user", content="Hello?")
    return Message.objects.create(conversation=conversation, position=2, role="assistant", status="pending",
                                  parent=question)


def _ended(message: Message) -> bool:
    return message.status not in ("pending", "streaming")


@asynccontextmanager
async def queued_and_watched(user, spec) -> AsyncIterator[Message]:
    """A pending answer on the model's queue, its conversation watched as an open socket would
    (a worker cancels an answer nobody waits for)."""
    from chat.conversations.actions import GENERATE_TASK
    from chat.conversations.liveness import keep_watching

    pending = await database_sync_to_async(_queued_answer)(user)
    watching = asyncio.create_task(keep_watching(pending.conversation_id))
    try:
        await database_sync_to_async(celery_app.send_task)(GENERATE_TASK, args=[str(pending.id)],
                                                           queue=spec.celery_queue)
        yield pending
    finally:
        watching.cancel()


async def row_once(message: Message, condition: Callable[[Message], bool] = _ended, within: float = 60) -> Message:
    """The row once `condition` holds (`within` seconds only guard against hanging)."""
    deadline = time.monotonic() + within
    saved = await database_sync_to_async(Message.objects.get)(id=message.id)
    while not condition(saved) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        saved = await database_sync_to_async(Message.objects.get)(id=message.id)
    return saved


async def answer(user, spec) -> Message:
    async with queued_and_watched(user, spec) as pending:
        return await row_once(pending)


@celery_path
async def test_a_worker_writes_the_upstreams_answer_into_the_row(upstream, upstream_model, upstream_worker, alice,
                                                                 broker):
    assert isinstance(tasks._engines[upstream_model], UpstreamEngine)  # joined without loading weights
    upstream.reply = stream(chunk(reasoning="Hm."), ": keep-alive", chunk(content="Hello"),
                            chunk(content=" there", finish="length"), usage(21, 7), "data: [DONE]")
    saved = await answer(alice, upstream_model)
    assert (saved.status, saved.content, saved.reasoning) == ("done", "Hello there", "Hm.")
    assert (saved.prompt_tokens, saved.completion_tokens, saved.finish_reason) == (21, 7, "length")
    body = upstream.request["body"]
    assert body["model"] == "served" and body["messages"] == [{"role": "user", "content": "Hello?"}]
    assert (body["seed"], body["stop"], body["max_tokens"]) == (5, ["STOP"], 64)


@celery_path
async def test_a_refusing_upstream_fails_the_row_with_its_reason(upstream, upstream_model, upstream_worker, alice,
                                                                broker):
    upstream.reply = refuse(503, {"error": {"message": "The server is overloaded", "type": "server_error"}})
    saved = await answer(alice, upstream_model)
    assert (saved.status, saved.finish_reason, saved.content) == ("failed", "error", "")
    # The status, not the upstream's own words (they may quote anything): those are in the worker's log.
    assert saved.error.startswith("The upstream server for remote-chat answered with status 503. (error id: ")
    assert "overloaded" not in saved.error


@celery_path
async def test_an_upstream_failing_mid_answer_keeps_the_partial_text(upstream, upstream_model, upstream_worker,
                                                                    alice, broker):
    upstream.reply = stream(chunk(content="So far "), chunk(content="so good"), 0.2,
                            {"error": {"message": "worker crashed"}})
    saved = await answer(alice, upstream_model)
    assert (saved.status, saved.content) == ("failed", "So far so good")
    assert saved.error.startswith("The upstream server for remote-chat failed to answer. (error id: ")
    assert "crashed" not in saved.error


@celery_path
async def test_stop_hangs_up_on_the_upstream(upstream, upstream_model, upstream_worker, alice, broker):
    from chat.conversations.actions import do_request_stop

    upstream.reply = endless(upstream)
    async with queued_and_watched(alice, upstream_model) as pending:
        writing = await row_once(pending, lambda m: m.status == "streaming" and bool(m.content))
        assert writing.status == "streaming"
        await database_sync_to_async(do_request_stop)(alice, pending.id)
        saved = await row_once(pending)
    assert saved.status == "cancelled" and saved.content.startswith("la la ")
    assert upstream.hung_up.wait(30), "the upstream kept writing an answer that was stopped"
