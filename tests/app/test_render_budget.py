"""A conversation of huge answers (200,000 characters of code, many versions: what an import may hold) costs a
bounded amount to show: the page carries the branch's newest messages within a budget, each past the render
cap as plain text with a notice; earlier ones come from an owner-only endpoint; `resume` floods are refused
per socket while other sockets keep getting their frames."""
from __future__ import annotations

import json
import re
import time

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from chat.conversations import events
from chat.conversations.frames import message_frame
from chat.conversations.models import Conversation, Message
from tests.support.sockets import open_socket, receive, send
from tests.unit.test_render_budget import NOTICE, code_answer

TURNS, VERSIONS, ANSWER_CHARS = 5, 5, 200_000


def build_huge_tree(user) -> tuple[Conversation, list[Message]]:
    """TURNS questions, each answered VERSIONS times with ANSWER_CHARS of fenced code (5 MB of answers); the
    branch on show goes through each turn's newest answer. Returns the conversation and that branch."""
    conversation = Conversation.objects.create(user=user, model="deepseek-chat", title="Huge")
    position, parent, branch = 0, None, []
    for turn in range(TURNS):
        position += 1
        question = Message.objects.create(conversation=conversation, position=position, role="user",
                                           content=f"question {turn}", parent=parent)
        branch.append(question)
        for version in range(VERSIONS):
            position += 1
            parent = Message.objects.create(conversation=conversation, position=position, role="assistant",
                                            content=code_answer(ANSWER_CHARS, tag=turn * 10 + version),
                                            parent=question)
        branch.append(parent)
    Conversation.objects.filter(id=conversation.id).update(current_leaf=parent)
    return conversation, branch


def initial_state(page: bytes) -> dict:
    found = re.search(rb'<script id="initial-state" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


@pytest.mark.django_db
def test_the_page_of_a_huge_tree_is_bounded_and_shows_the_notice(alice, settings):
    conversation, branch = build_huge_tree(alice)
    client = Client()
    client.force_login(alice)
    before = Message.objects.count()
    started = time.perf_counter()
    response = client.get(f"/c/{conversation.id}/")
    elapsed = time.perf_counter() - started
    page = response.content
    print(f"\npage of {Message.objects.count()} messages, {TURNS * VERSIONS} answers of {ANSWER_CHARS:,} chars: "
          f"{len(page):,} bytes in {elapsed:.2f} s")
    assert response.status_code == 200
    # Bounded by the page's budget (its text and HTML, JSON-escaped), not by the 5 MB of answers in the tree.
    assert len(page) < 4 * settings.CONVERSATION_PAGE_CHARS + 2 * ANSWER_CHARS
    state = initial_state(page)
    full = [m for m in state["messages"] if not m.get("stub")]
    assert len(state["messages"]) == Message.objects.filter(conversation=conversation).count()  # every place
    assert 1 <= len(full) < len(branch)
    assert [m["id"] for m in full] == [str(m.id) for m in branch[-len(full):]]  # the branch's newest, in order
    assert all(NOTICE in m["html"] for m in full if m["role"] == "assistant")
    assert all("content" not in m for m in state["messages"] if m.get("stub"))
    assert Message.objects.count() == before  # a view writes nothing


@pytest.mark.django_db
def test_earlier_messages_come_in_windows_from_an_owner_only_endpoint(alice, bob, settings):
    settings.CONVERSATION_PAGE_MESSAGES = 3
    conversation, branch = build_huge_tree(alice)
    owner, other = Client(), Client()
    owner.force_login(alice)
    other.force_login(bob)
    state = initial_state(owner.get(f"/c/{conversation.id}/").content)
    full = [m["id"] for m in state["messages"] if not m.get("stub")]
    assert full == [str(m.id) for m in branch[-3:]]

    url = f"/c/{conversation.id}/messages/"
    earlier = owner.get(url, {"until": str(branch[-4].id)})
    assert earlier.status_code == 200
    bodies = earlier.json()["messages"]
    assert [m["id"] for m in bodies] == [str(m.id) for m in branch[-6:-3]]  # the next window, oldest first
    assert all(NOTICE in m["html"] for m in bodies if m["role"] == "assistant")
    # Another version (not on the branch shown) is fetched the same way when it is picked.
    other_version = Message.objects.filter(parent=branch[0], role="assistant").order_by("position").first()
    assert owner.get(url, {"until": str(other_version.id)}).json()["messages"][-1]["id"] == str(other_version.id)

    bobs = Conversation.objects.create(user=bob, model="deepseek-chat")
    before = Message.objects.count()
    for client, target, until in ((other, conversation.id, branch[-4].id),  # not his conversation
                                  (other, bobs.id, branch[-4].id),  # his, but not his message
                                  (owner, conversation.id, "not-a-uuid"),
                                  (owner, bobs.id, branch[-4].id)):
        answer = client.get(f"/c/{target}/messages/", {"until": str(until)})
        assert answer.status_code == 404 and b"code-block" not in answer.content and b"question" not in answer.content
    assert Client().get(url, {"until": str(branch[-4].id)}).status_code == 302  # to the login page
    assert Message.objects.count() == before


@pytest.mark.django_db
def test_a_budget_of_characters_stops_the_window_before_the_count_does(alice, settings):
    settings.CONVERSATION_PAGE_CHARS = 3 * ANSWER_CHARS
    conversation, branch = build_huge_tree(alice)
    client = Client()
    client.force_login(alice)
    bodies = client.get(f"/c/{conversation.id}/messages/", {"until": str(branch[-1].id)}).json()["messages"]
    assert 1 <= len(bodies) < settings.CONVERSATION_PAGE_MESSAGES
    assert sum(len(m["content"]) + len(m.get("html", "")) for m in bodies) <= settings.CONVERSATION_PAGE_CHARS
    settings.CONVERSATION_PAGE_CHARS = 1  # one message at least, however small the budget
    assert len(client.get(f"/c/{conversation.id}/messages/", {"until": str(branch[-1].id)}).json()["messages"]) == 1


@pytest.mark.django_db(transaction=True)
async def test_a_resume_flood_is_refused_and_other_sockets_keep_getting_frames(alice, bob, broker, settings):
    settings.SOCKET_RESUMES_PER_SECOND = 0.01  # no refill while the test runs
    conversation, branch = await database_sync_to_async(build_huge_tree)(alice)
    bobs = await database_sync_to_async(Conversation.objects.create)(user=bob, model="deepseek-chat")
    bobs_answer = await database_sync_to_async(Message.objects.create)(
        conversation=bobs, position=1, role="assistant", content="bob's answer")
    before = await database_sync_to_async(Message.objects.count)()
    flooder, bystander = await open_socket(alice, conversation.id), await open_socket(bob, bobs.id)
    flood = 15
    for _ in range(flood):
        await send(flooder, {"type": "resume", "message_id": str(branch[-1].id), "after_seq": 0})
    # Bob's socket is answered, and his conversation's frames reach him, while Alice's flood is handled.
    await send(bystander, {"type": "resume", "message_id": str(bobs_answer.id), "after_seq": 0})
    assert (await receive(bystander))["message"]["content"] == "bob's answer"
    assert (await receive(bystander))["type"] == "done"
    await events.apublish(bobs.id, await database_sync_to_async(message_frame)(bobs_answer))
    assert (await receive(bystander))["message"]["id"] == str(bobs_answer.id)

    frames = [await receive(flooder) for _ in range(2 * settings.SOCKET_RESUME_BURST
                                                     + flood - settings.SOCKET_RESUME_BURST)]
    answered = [f for f in frames if f["type"] == "message"]
    refused = [f for f in frames if f["type"] == "error"]
    assert len(answered) == settings.SOCKET_RESUME_BURST
    assert all(NOTICE in f["message"]["html"] for f in answered)
    assert len(refused) == flood - settings.SOCKET_RESUME_BURST
    assert {(f["code"], f["message"]) for f in refused} == {("rate_limited", "Too many resume requests; slow down.")}
    assert await database_sync_to_async(Message.objects.count)() == before
    await flooder.disconnect()
    await bystander.disconnect()
