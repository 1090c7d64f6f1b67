"""Daily token quotas, held up front and settled at the end (chat/accounts/usage.py, chat/conversations/token_quota.py):
concurrent requests cannot together overshoot, unspent tokens come back, a hold whose answer ended without
its worker is given back, and the socket has its own quota."""
from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid

import httpx
import openai
import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import connection

from chat.accounts import api_keys
from chat.accounts import usage as api_usage
from chat.accounts.models import ApiUsage, ChatUsage, TokenReservation
from chat.conversations import actions
from chat.conversations.models import Conversation, Message
from chat.core.worker_routing import Heartbeat
from deepseek_web.asgi import application
from tests.support.sockets import open_socket, receive, send

pytestmark = pytest.mark.django_db(transaction=True)
CHAT = "deepseek-chat"
HELLO = [{"role": "user", "content": "Hello"}]
# "Hello" and its template overhead (21) and the demo model's longest answer (96): one request's hold.
ONE_REQUEST = 117


@pytest.fixture(autouse=True)
def fresh_limits(broker):
    for pattern in ("deepseek:api:*", "deepseek:chat:messages:*"):
        for name in broker.scan_iter(pattern):
            broker.delete(name)
    yield


@pytest.fixture
def worker_alive(redis_url):
    """A heartbeat for the demo model's queue, as a worker sends (no worker consumes it here)."""
    beat = Heartbeat("fake-worker@test", ["model.deepseek-chat"]).start()
    yield
    beat.stop()


@pytest.fixture
def client(alice):
    key = api_keys.do_create_key(alice, "tests")[1]
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, max_retries=0,
                              http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=application)))


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def rows() -> tuple[int, int]:
    return Message.objects.count(), TokenReservation.objects.count()


def send_chat(user, content: str = "Hello") -> actions.SentMessage:
    conversation = Conversation.objects.create(user=user, model=CHAT)
    return actions.do_send_message(user, conversation.id, content)


async def test_two_concurrent_api_requests_that_together_exceed_the_quota_get_one_refusal(client, alice, settings,
                                                                                          worker_alive):
    settings.API_TOKENS_PER_DAY = 2 * ONE_REQUEST - 1  # room for one request's most, not two
    settings.API_QUEUE_TIMEOUT_SECONDS = 2  # nobody reads the queue: the admitted one times out

    async def ask():
        try:
            await client.chat.completions.create(model=CHAT, messages=HELLO)
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.json()["error"]["code"], exc.response.headers.get("retry-after")

    outcomes = sorted(await asyncio.gather(ask(), ask()))
    assert [o[:2] for o in outcomes] == [(429, "quota_held"), (503, "queue_timeout")]
    assert outcomes[0][2] == str(api_usage.QUOTA_BUSY_RETRY_SECONDS)
    # The refused one wrote nothing: one question and one (cancelled) answer in all.
    assert await sync_to_async(Message.objects.count)() == 2
    # The cancelled answer's hold is given back by the next request (no worker ever settled it).
    with pytest.raises(openai.APIStatusError) as third:
        await client.chat.completions.create(model=CHAT, messages=HELLO)
    assert third.value.response.json()["error"]["code"] == "queue_timeout"


async def test_a_request_whose_most_can_never_fit_is_told_what_is_left(client, alice, settings, worker_alive):
    settings.API_TOKENS_PER_DAY = 1000
    settings.API_QUEUE_TIMEOUT_SECONDS = 2  # were it admitted, nobody reads the queue
    await sync_to_async(ApiUsage.objects.create)(user=alice, day=today(), prompt_tokens=900)
    before = await sync_to_async(rows)()
    with pytest.raises(openai.APIStatusError) as refused:
        await client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=96)
    assert refused.value.status_code == 402
    error = refused.value.response.json()["error"]
    assert error["code"] == "insufficient_quota" and "100 of your 1000 tokens" in error["message"]
    assert await sync_to_async(rows)() == before
    assert (await sync_to_async(ApiUsage.objects.get)(user=alice)).reserved_tokens == 0


def test_holds_taken_at_the_same_moment_never_pass_the_quota_together(alice, settings):
    settings.API_TOKENS_PER_DAY = 100
    start, outcomes = threading.Barrier(4), []

    def take():
        start.wait()
        try:
            api_usage.reserve(api_usage.Meter.API, alice.id, uuid.uuid4(), 40)
            outcomes.append("held")
        except api_usage.LimitExceeded as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["held", "held", "quota_held", "quota_held"]
    assert ApiUsage.objects.get(user=alice).reserved_tokens == 80
    assert TokenReservation.objects.count() == 2


def test_settling_gives_back_what_the_answer_did_not_spend(alice, settings):
    settings.CHAT_TOKENS_PER_DAY = 1000
    answer = send_chat(alice).assistant_message
    held = TokenReservation.objects.get(ref=answer.id)
    assert held.meter == "chat" and ChatUsage.objects.get(user=alice).reserved_tokens == held.tokens > 96
    api_usage.settle("chat", alice.id, answer.id, 12, 30)  # what the worker calls when the answer ends
    usage = ChatUsage.objects.get(user=alice)
    assert (usage.reserved_tokens, usage.prompt_tokens, usage.completion_tokens) == (0, 12, 30)
    assert not TokenReservation.objects.exists()
    api_usage.release([answer.id])  # a second give-back (the sweep, late) gives nothing more
    assert ChatUsage.objects.get(user=alice).reserved_tokens == 0


def test_a_hold_whose_answer_failed_without_its_worker_is_given_back(alice, settings):
    settings.CHAT_TOKENS_PER_DAY = 1000
    settings.CHAT_ACTIVE_ANSWERS_PER_USER = 0
    first = send_chat(alice).assistant_message
    Message.objects.filter(id=first.id).update(status=Message.Status.FAILED)  # as the sweep does
    second = send_chat(alice).assistant_message
    assert list(TokenReservation.objects.values_list("ref", flat=True)) == [second.id]
    assert ChatUsage.objects.get(user=alice).reserved_tokens == TokenReservation.objects.get().tokens


def test_the_chat_and_the_api_quotas_are_apart_and_zero_means_none(alice, settings):
    settings.CHAT_TOKENS_PER_DAY = 0
    settings.API_TOKENS_PER_DAY = 10
    send_chat(alice)
    assert not TokenReservation.objects.exists()
    api_usage.settle("chat", alice.id, uuid.uuid4(), 5, 5)  # recorded, even without a quota
    assert ChatUsage.objects.get(user=alice).total_tokens == 10 and not ApiUsage.objects.exists()


async def test_the_socket_over_its_quota_gets_a_clear_error_and_nothing_is_written(alice, settings):
    settings.CHAT_TOKENS_PER_DAY = 50  # less than one answer's most
    chat = await database_sync_to_async(Conversation.objects.create)(user=alice, model=CHAT)
    socket = await open_socket(alice, chat.id)
    await send(socket, {"type": "send", "content": "Hello", "client_id": "c1"})
    frame = await receive(socket)
    assert frame["type"] == "error" and frame["code"] == "insufficient_quota"
    assert "of your 50 tokens for today are left" in frame["message"]
    assert await database_sync_to_async(rows)() == (0, 0)
    await database_sync_to_async(ChatUsage.objects.create)(user=alice, day=today(), completion_tokens=50)
    await send(socket, {"type": "send", "content": "Hello", "client_id": "c2"})
    frame = await receive(socket)
    assert frame["code"] == "insufficient_quota" and "used your 50 tokens" in frame["message"]
    assert await database_sync_to_async(rows)() == (0, 0)
    await socket.disconnect()
