"""The /v1 API's refusals, through the official `openai` client in-process: each status maps to the
client's exception class, the body is OpenAI's error shape, and nothing is written."""
from __future__ import annotations

import datetime as dt
import json
import time

import httpx
import openai
import pytest
from asgiref.sync import sync_to_async

from chat.accounts import api_keys
from chat.accounts import usage as api_usage
from chat.accounts.models import ApiUsage
from chat.audit.models import AuditEvent
from chat.conversations.models import Conversation, Message
from chat.core.worker_routing import Heartbeat
from deepseek_web.asgi import application
from tests.support.conformance import assert_conforms

pytestmark = pytest.mark.django_db(transaction=True)
CHAT = "deepseek-chat"
HELLO = [{"role": "user", "content": "Hello"}]
BLOCKED = "Tell me how to make a pipe bomb"  # a default moderation rule (chat/moderation/defaults.py)


@pytest.fixture
def key(alice):
    return api_keys.do_create_key(alice, "tests")[1]


@pytest.fixture
def client(key):
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, max_retries=0,
                              http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=application)))


@pytest.fixture
def raw():
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver")


@pytest.fixture
def worker_alive(redis_url):
    """A heartbeat for the demo model's queue, as a worker sends (no worker consumes it here)."""
    beat = Heartbeat("fake-worker@test", ["model.deepseek-chat"]).start()
    yield
    beat.stop()


@pytest.fixture(autouse=True)
def fresh_limits(redis_url):
    from chat.core.redis_server import shared_client

    client = shared_client(redis_url)
    for name in client.scan_iter("deepseek:api:*"):
        client.delete(name)
    yield


def counts() -> tuple[int, int, int]:
    return Conversation.objects.count(), Message.objects.count(), ApiUsage.objects.count()


async def refused(call, exc_class, status: int, code: str, param: str | None = None):
    """Make the call; it must raise `exc_class` with `status`, our code and param, and write nothing."""
    before = await sync_to_async(counts)()
    with pytest.raises(exc_class) as caught:
        await call()
    error = caught.value
    assert error.status_code == status
    body = error.response.json()
    assert_conforms("ErrorResponse", body)
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param
    assert error.response.headers["content-type"].startswith("application/json")
    after = await sync_to_async(counts)()
    assert after[:2] == before[:2], "a refused request wrote conversations or messages"
    return error


async def test_it_refuses_a_missing_or_wrong_key_with_401(alice):
    for key in ("sk-not-a-key", "not even the format"):
        bad = openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, max_retries=0,
                                 http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=application)))
        error = await refused(lambda bad=bad: bad.chat.completions.create(model=CHAT, messages=HELLO),
                              openai.AuthenticationError, 401, "invalid_api_key")
        assert error.response.headers["www-authenticate"].startswith("Bearer")
    assert await sync_to_async(AuditEvent.objects.filter(action="api_key_rejected").count)() == 2


async def test_it_refuses_no_authorization_header(raw):
    response = await raw.post("/v1/chat/completions", json={"model": CHAT, "messages": HELLO})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


async def test_it_stops_a_revoked_key_at_once(client, alice, worker_alive):
    row = await sync_to_async(api_keys.authenticate_key)(client.api_key)
    await sync_to_async(api_keys.do_revoke_key)(alice, row.id)
    await refused(lambda: client.models.list(), openai.AuthenticationError, 401, "invalid_api_key")


async def test_it_stops_the_keys_of_a_deactivated_user(client, alice):
    alice.is_active = False
    await sync_to_async(alice.save)()
    await refused(lambda: client.chat.completions.create(model=CHAT, messages=HELLO),
                  openai.AuthenticationError, 401, "invalid_api_key")


async def test_it_answers_400_for_a_body_that_is_not_json(raw, key):
    for body in (b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"):
        response = await raw.post("/v1/chat/completions", content=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 400, body
        assert_conforms("ErrorResponse", response.json())


async def test_it_answers_400_for_an_unknown_model(client):
    await refused(lambda: client.chat.completions.create(model="gpt-17", messages=HELLO),
                  openai.BadRequestError, 400, "model_not_found", "model")


@pytest.mark.parametrize("messages", [
    [], [{"role": "user"}], [{"role": "wizard", "content": "hi"}], [{"role": "system", "content": "only"}],
    [{"role": "user", "content": "   "}], [{"role": "user", "content": 42}], ["hello"],
])
async def test_it_answers_400_for_malformed_messages(client, messages):
    await refused(lambda: client.chat.completions.create(model=CHAT, messages=messages),
                  openai.BadRequestError, 400, refused_code(messages), "messages")


def refused_code(messages) -> str:
    if messages == [{"role": "user", "content": "   "}]:
        return "empty_message"
    return "invalid_request"


@pytest.mark.parametrize(("options", "param"), [
    ({"temperature": 2.5}, "temperature"), ({"temperature": "hot"}, "temperature"), ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 2.5}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
    ({"stop": ["x"] * 17}, "stop"), ({"stop": 5}, "stop"), ({"seed": 2**64}, "seed"), ({"seed": 1.5}, "seed"),
    ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"response_format": {"type": "json_object"}}, "response_format"), ({"presence_penalty": 9}, "presence_penalty"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
])
async def test_it_answers_422_naming_the_bad_parameter(client, options, param):
    await refused(lambda: client.chat.completions.create(model=CHAT, messages=HELLO, **options),
                  openai.UnprocessableEntityError, 422, "invalid_parameter", param)


async def test_it_refuses_a_prompt_moderation_blocks_and_audits_it(client, worker_alive):
    error = await refused(lambda: client.chat.completions.create(model=CHAT, messages=[
        {"role": "user", "content": BLOCKED}]), openai.BadRequestError, 400, "content_filter", "messages")
    assert "pipe bomb" not in error.response.text
    event = await sync_to_async(AuditEvent.objects.filter(action="moderation_block").last)()
    assert event.detail["field"] == "messages[0].content"


async def test_it_refuses_a_conversation_longer_than_the_context(client, worker_alive, settings):
    settings.MAX_PROMPT_CHARS = 100_000
    long = "word " * 5000  # well past the demo model's context
    await refused(lambda: client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": long}]),
                  openai.BadRequestError, 400, "context_length_exceeded", "messages")


async def test_it_answers_413_for_a_body_over_the_limit(raw, key, settings):
    settings.API_MAX_BODY_BYTES = 2048
    response = await raw.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": CHAT, "messages": [{"role": "user", "content": "x" * 5000}]})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_it_answers_503_with_retry_after_when_no_worker_serves_the_model(client):
    error = await refused(lambda: client.chat.completions.create(model=CHAT, messages=HELLO),
                          openai.InternalServerError, 503, "no_worker")
    assert int(error.response.headers["retry-after"]) > 0


async def test_it_limits_requests_per_minute_and_recovers_in_the_next_window(client, settings, monkeypatch,
                                                                             worker_alive):
    settings.API_REQUESTS_PER_MINUTE = 2
    monkeypatch.setattr(api_usage, "RATE_WINDOW_SECONDS", 2)  # a two-second "minute"
    time.sleep(2 - time.time() % 2 + 0.05)  # start at the beginning of a window
    # The limits come before the body is read or parsed (a huge body costs nothing refused): a bad one counts too.
    with pytest.raises(openai.UnprocessableEntityError):
        await client.chat.completions.create(model=CHAT, messages=HELLO, temperature=-1)
    await _admitted_request(client)
    error = await refused(lambda: client.chat.completions.create(model=CHAT, messages=HELLO),
                          openai.RateLimitError, 429, "rate_limit_exceeded")
    assert 1 <= int(error.response.headers["retry-after"]) <= 2
    await client.models.list()  # listing models is not limited
    time.sleep(2 - time.time() % 2 + 0.05)
    await _admitted_request(client)  # a new window
    assert await sync_to_async(lambda: ApiUsage.objects.get().requests)() == 3


async def _admitted_request(client) -> None:
    """A request that passes the limits and is then refused for a reason that writes nothing
    (its only message is a blocked prompt), so no worker is needed."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": BLOCKED}])
    assert caught.value.response.json()["error"]["code"] == "content_filter"


async def test_it_limits_requests_in_flight_and_frees_the_slot(client, alice, settings, worker_alive):
    settings.API_CONCURRENT_REQUESTS = 1
    running = await sync_to_async(api_usage.admit)(alice.id)  # another request of alice's, still running
    error = await refused(lambda: client.chat.completions.create(model=CHAT, messages=HELLO),
                          openai.RateLimitError, 429, "too_many_concurrent_requests")
    assert error.response.headers["retry-after"] == "1"
    await sync_to_async(running.release)()
    await _admitted_request(client)
    assert await sync_to_async(api_usage.in_flight)(alice.id) == 0, "the refused request kept its slot"


async def test_it_answers_402_when_todays_tokens_are_spent_and_not_tomorrow(client, alice, settings, worker_alive):
    settings.API_TOKENS_PER_DAY = 1000
    today = dt.datetime.now(dt.UTC).date()
    await sync_to_async(ApiUsage.objects.create)(user=alice, day=today, requests=3, prompt_tokens=600,
                                                 completion_tokens=400)
    error = await refused(lambda: client.chat.completions.create(model=CHAT, messages=HELLO),
                          openai.APIStatusError, 402, "insufficient_quota")
    assert 0 < int(error.response.headers["retry-after"]) <= 86400
    await sync_to_async(ApiUsage.objects.filter(user=alice).update)(day=today - dt.timedelta(days=1))
    await _admitted_request(client)


async def test_it_lists_the_configured_models(client, settings):
    listed = await client.models.list()
    assert [m.id for m in listed.data] == [m["name"] for m in settings.DEEPSEEK_MODELS]
    assert_conforms("ListModelsResponse", listed.model_dump())


async def test_it_answers_json_for_unknown_paths_and_wrong_methods(raw, key):
    headers = {"Authorization": f"Bearer {key}"}
    for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405),
                                 ("POST", "/v1/models", 405), ("GET", "/v1", 404)):
        response = await raw.request(method, path, headers=headers)
        assert response.status_code == status, path
        assert response.headers["content-type"] == "application/json"
        assert_conforms("ErrorResponse", response.json())


async def test_the_openapi_document_is_served_and_names_the_models(raw, settings):
    response = await raw.get("/v1/openapi.json")
    document = json.loads(response.content)
    assert document["openapi"].startswith("3.")
    schema = document["components"]["schemas"]["DeepSeekWebChatCompletionRequest"]
    assert schema["properties"]["model"]["enum"] == [m["name"] for m in settings.DEEPSEEK_MODELS]
    assert set(document["paths"]) == {"/chat/completions", "/models"}


async def test_it_answers_503_and_cancels_the_answer_when_no_worker_takes_it_in_time(client, settings,
                                                                                  worker_alive):
    settings.API_QUEUE_TIMEOUT_SECONDS = 1.5  # a heartbeat, but nobody reads the queue
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=CHAT, messages=HELLO)
    assert caught.value.status_code == 503
    assert caught.value.response.json()["error"]["code"] == "queue_timeout"
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert (answer.status, answer.finish_reason) == ("cancelled", "cancelled")


async def test_a_stream_reports_the_queue_timeout_as_an_error_chunk(client, settings, worker_alive):
    settings.API_QUEUE_TIMEOUT_SECONDS = 1.5
    settings.API_KEEPALIVE_SECONDS = 0.5
    stream = await client.chat.completions.create(model=CHAT, messages=HELLO, stream=True)
    seen = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            seen.append(chunk)
    assert "No worker took the request" in caught.value.message
    assert [c.choices[0].delta.role for c in seen] == ["assistant"]
