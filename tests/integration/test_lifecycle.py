"""A queued answer whose task Redis lost (restarted without its data) is queued again, once, and
answered; one whose task is still queued is left alone; none waits past the queue timeout."""
from __future__ import annotations

import datetime as dt
import time

import pytest
from django.utils import timezone

from chat.audit import record as audit
from chat.audit.models import AuditEvent
from chat.conversations import actions, lifecycle
from chat.conversations.models import Conversation, Message
from chat.core.served_models import get_model
from deepseek_web.celery import app as celery_app

pytestmark = pytest.mark.django_db


@pytest.fixture
def queue(broker, demo_model_path) -> str:
    """The demo model's shared queue, empty (no worker announced: answers go there)."""
    return get_model("deepseek-chat").celery_queue


def ask(user, capture=None) -> Message:
    """Send a message as the socket does; the pending answer is queued when the send commits."""
    conversation = Conversation.objects.create(user=user, model="deepseek-chat")
    if capture is None:  # a transactional test: on_commit runs at once
        return actions.do_send_message(user, conversation.id, "Hello, who are you?").assistant_message
    with capture(execute=True):
        return actions.do_send_message(user, conversation.id, "Hello, who are you?").assistant_message


def age(answer: Message, seconds: float) -> None:
    Message.objects.filter(id=answer.id).update(created_at=timezone.now() - dt.timedelta(seconds=seconds))


def lose_redis_data(broker, queue: str, answer: Message) -> None:
    """What a Redis restart without persistence does to a queued answer: its task and its key go."""
    broker.delete(queue, f"deepseek:queued:{answer.id}")


def test_the_enqueuer_marks_the_answer_queued(alice, queue, broker, django_capture_on_commit_callbacks, settings):
    answer = ask(alice, django_capture_on_commit_callbacks)
    assert broker.llen(queue) == 1
    ttl = broker.pttl(f"deepseek:queued:{answer.id}") / 1000
    assert settings.API_QUEUE_TIMEOUT_SECONDS + lifecycle.REQUEUE_AFTER_SECONDS < ttl


def test_a_pending_answer_whose_task_is_still_queued_is_not_queued_again(
        alice, queue, broker, django_capture_on_commit_callbacks):
    answer = ask(alice, django_capture_on_commit_callbacks)
    age(answer, 300)  # a long queue: it waits its turn, its key still there
    assert lifecycle.requeue_lost_answers() == 0
    assert broker.llen(queue) == 1


def test_a_just_created_answer_without_a_key_yet_is_not_queued_again(
        alice, queue, broker, django_capture_on_commit_callbacks):
    answer = ask(alice, django_capture_on_commit_callbacks)
    lose_redis_data(broker, queue, answer)  # as if the sweep ran between the commit and the enqueue
    assert lifecycle.requeue_lost_answers() == 0
    assert broker.llen(queue) == 0


def test_sweeping_twice_queues_a_lost_answer_once(alice, queue, broker, django_capture_on_commit_callbacks):
    answer = ask(alice, django_capture_on_commit_callbacks)
    lose_redis_data(broker, queue, answer)
    age(answer, lifecycle.REQUEUE_AFTER_SECONDS + 5)
    assert lifecycle.requeue_lost_answers() == 1
    assert lifecycle.requeue_lost_answers() == 0
    lifecycle.sweep()  # the workers' periodic sweep, as it runs
    assert broker.llen(queue) == 1
    assert Message.objects.get(id=answer.id).status == "pending"


def test_of_two_sweeps_at_once_only_one_queues_a_lost_answer(
        alice, queue, broker, monkeypatch, django_capture_on_commit_callbacks):
    answer = ask(alice, django_capture_on_commit_callbacks)
    lose_redis_data(broker, queue, answer)
    age(answer, lifecycle.REQUEUE_AFTER_SECONDS + 5)
    assert lifecycle.requeue_lost_answers() == 1
    # The other sweep read the keys before the first one set it again: it still finds the key taken.
    client = lifecycle._client()
    monkeypatch.setattr(lifecycle, "_client", lambda: _StaleReads(client))
    assert lifecycle.requeue_lost_answers() == 0
    assert broker.llen(queue) == 1


class _StaleReads:
    def __init__(self, client) -> None:
        self._client = client

    def mget(self, keys):
        return [None] * len(keys)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_an_answer_no_worker_took_within_the_queue_timeout_fails_and_is_not_queued_again(
        alice, queue, broker, settings, django_capture_on_commit_callbacks):
    settings.API_QUEUE_TIMEOUT_SECONDS = 60
    answer = ask(alice, django_capture_on_commit_callbacks)
    lose_redis_data(broker, queue, answer)
    age(answer, 60 + lifecycle.REQUEUE_AFTER_SECONDS + 1)
    lifecycle.sweep()
    answer.refresh_from_db()
    assert (answer.status, answer.finish_reason, answer.error) == ("failed", "error", lifecycle.UNTAKEN_ERROR)
    assert broker.llen(queue) == 0


def test_a_failed_send_leaves_no_key_so_a_sweep_queues_it_later(alice, queue, broker, monkeypatch):
    answer = Message.objects.create(conversation=Conversation.objects.create(user=alice, model="deepseek-chat"),
                                    position=1, role="assistant", status="pending")

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker away")

    monkeypatch.setattr(celery_app, "send_task", broker_down)
    with pytest.raises(ConnectionError):
        lifecycle.enqueue(answer.id, queue)
    assert not broker.exists(f"deepseek:queued:{answer.id}")


@pytest.mark.django_db(transaction=True)
def test_a_lost_answer_is_queued_again_and_answered_once_by_a_real_worker(alice, queue, broker, settings,
                                                                          running_worker):
    settings.ABANDONED_AFTER_SECONDS = 600  # nobody watches this conversation: do not cancel the answer
    answer = ask(alice)
    lose_redis_data(broker, queue, answer)
    age(answer, lifecycle.REQUEUE_AFTER_SECONDS + 5)
    assert lifecycle.requeue_lost_answers() == 1
    assert lifecycle.requeue_lost_answers() == 0
    # Not announced: it takes the requeued task from the shared queue, as any worker would.
    with running_worker([queue], concurrency=2, announce=False):
        deadline = time.monotonic() + 120  # only against hanging: the row's state is what is awaited
        while Message.objects.get(id=answer.id).is_active and time.monotonic() < deadline:
            time.sleep(0.2)
    answer.refresh_from_db()
    assert answer.status == "done" and answer.finish_reason in ("stop", "length") and answer.content
    # One generation wrote it, and the row holds exactly that generation's text, once.
    calls = AuditEvent.objects.filter(action="model_call", message_id=answer.id)
    assert calls.count() == 1
    assert calls.get().output_sha256 == audit.text_sha256(answer.content)
    assert broker.llen(queue) == 0
