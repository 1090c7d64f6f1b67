"""Answers a dead worker left `streaming` are failed with their partial text, and only those."""
from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from chat.conversations import liveness
from chat.conversations.lifecycle import ORPHAN_ERROR, fail_orphaned_answers
from chat.conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_writing_keys(redis_url):
    from chat.core.redis_server import shared_client

    client = shared_client(redis_url)
    for key in client.scan_iter("deepseek:writing:*"):
        client.delete(key)


def streaming(user, seconds_since_saved: float, content: str = "half an ans") -> Message:
    conversation = Conversation.objects.create(user=user, model="deepseek-chat")
    question = Message.objects.create(conversation=conversation, position=1, role="user", content="q")
    answer = Message.objects.create(conversation=conversation, position=2, parent=question, role="assistant",
                                    status="streaming", content=content, seq=3)
    Message.objects.filter(id=answer.id).update(updated_at=timezone.now() - dt.timedelta(seconds=seconds_since_saved))
    return answer


def test_it_fails_an_answer_no_live_worker_writes_and_keeps_its_text(alice):
    orphan = streaming(alice, 60)
    assert fail_orphaned_answers() == 1
    orphan.refresh_from_db()
    assert (orphan.status, orphan.finish_reason, orphan.error) == ("failed", "error", ORPHAN_ERROR)
    assert (orphan.content, orphan.seq) == ("half an ans", 3)


def test_it_leaves_answers_a_live_worker_writes_or_saved_recently(alice):
    held, recent = streaming(alice, 60), streaming(alice, 2)
    liveness.mark_writing([str(held.id)], "w1@host")
    assert fail_orphaned_answers() == 0
    assert set(Message.objects.filter(role="assistant").values_list("status", flat=True)) == {"streaming"}
    assert liveness.writers([held.id, recent.id]) == {str(held.id): "w1@host", str(recent.id): None}


def test_it_fails_nothing_when_redis_cannot_say_who_is_alive(alice, settings):
    from chat.core.redis_server import free_port

    streaming(alice, 60)
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    assert fail_orphaned_answers() == 0
    assert Message.objects.get(role="assistant").status == "streaming"
