"""The chat's daily token quota on real parts: a socket answer written by a real worker holds its most while
it is written and settles to what it spent; past the quota the next one is refused, nothing saved."""
from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from chat.accounts.models import ChatUsage, TokenReservation
from chat.conversations.models import Conversation, Message
from tests.support.sockets import open_socket, receive, receive_until, send

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
QUEUE = "model.deepseek-chat"


@pytest.fixture(scope="module")
def worker(demo_model_path, running_worker):
    with running_worker([QUEUE], concurrency=2) as running:
        yield running


async def test_an_answer_settles_to_what_it_spent_and_the_spent_quota_refuses_the_next(worker, alice, broker,
                                                                                     settings):
    settings.CHAT_TOKENS_PER_DAY = 100_000
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, model="deepseek-chat")
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "Hello", "client_id": "c"})
    await receive(socket)
    answer_id = (await receive(socket))["message"]["id"]
    frames = await receive_until(socket, "done")
    done = frames[-1]
    spent = done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"]
    usage = await database_sync_to_async(ChatUsage.objects.get)(user=alice)
    # settled before `done` was sent: the hold is gone and only what was spent counts
    assert (usage.reserved_tokens, usage.total_tokens) == (0, spent) and spent > 0
    assert not await database_sync_to_async(TokenReservation.objects.filter(ref=answer_id).exists)()
    # The quota is now all but spent: the next answer's most does not fit, and nothing is saved.
    settings.CHAT_TOKENS_PER_DAY = spent + 10
    before = await database_sync_to_async(Message.objects.count)()
    await send(socket, {"type": "send", "content": "Again", "client_id": "d"})
    frame = await receive(socket)
    assert frame["type"] == "error" and frame["code"] == "insufficient_quota"
    assert await database_sync_to_async(Message.objects.count)() == before
    await socket.disconnect()
