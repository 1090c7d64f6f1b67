"""An answer's life in its row, in one place: queued, claimed, then (if nobody finishes it) rescued.

claim_row() is the only pending → streaming step; fail_orphaned_answers() is the only meaning of "orphan"
(a row left streaming by a worker that stopped); the sweep below also requeues lost tasks and fails
answers no worker took.

Queueing an answer's task, and the sweep that keeps a queued answer from waiting forever.

The task message lives in Redis (the Celery broker). Redis restarted without its data loses it, and
its answer would stay `pending` for good. So the enqueuer also writes a key per answer in the same
Redis ("deepseek:queued:<message id>", outliving the queue timeout): the key and the task vanish
together. Every worker's sweep (chat.conversations.liveness.WritingBeacon) then
- queues again a pending answer older than REQUEUE_AFTER_SECONDS whose key is gone (a younger one may
  still be on its way to the queue; one whose key is there is just waiting its turn). Setting the key
  again with NX decides which sweeper sends it, so two sweeps never queue it twice; a worker that
  took the answer meanwhile is harmless too (claim() skips answers that are not pending);
- fails a pending answer older than API_QUEUE_TIMEOUT_SECONDS (+ REQUEUE_AFTER_SECONDS, so an API
  request still waiting for it answers its own 503 first) with UNTAKEN_ERROR, whatever its key says.
"""
from __future__ import annotations

import datetime
import logging

import redis
from celery import current_app as celery_app
from django.conf import settings
from django.utils import timezone

from chat.conversations import events, liveness
from chat.conversations.frames import done_frame, error_frame, message_frame
from chat.conversations.models import Message
from chat.core.redis_server import client as _client
from chat.core.served_models import get_model
from chat.core.worker_routing import queue_for
from inference.registry import UnknownModel

log = logging.getLogger(__name__)
GENERATE_TASK = "inference.tasks.generate"
REQUEUE_AFTER_SECONDS = 30.0
UNTAKEN_ERROR = "No worker took this answer in time. Regenerate to try again."


def _key(message_id: object) -> str:
    return f"deepseek:queued:{message_id}"


def _ttl_ms() -> int:
    """Longer than a queued answer may live (the bound below), so a waiting answer keeps its key."""
    return int((settings.API_QUEUE_TIMEOUT_SECONDS + 2 * REQUEUE_AFTER_SECONDS) * 1000)


def enqueue(message_id: object, queue: str, headers: dict[str, str] | None = None) -> None:
    """Send the answer's task to `queue`, its key first (so a task in the broker always has one)."""
    try:
        _client().set(_key(message_id), "1", px=_ttl_ms())
    except redis.RedisError:  # then the send most likely fails too; if not, a sweep sends a harmless duplicate
        log.warning("could not mark answer %s queued", message_id, exc_info=True)
    _send(message_id, queue, headers)


def _send(message_id: object, queue: str, headers: dict[str, str] | None = None) -> None:
    try:
        celery_app.send_task(GENERATE_TASK, args=[str(message_id)], queue=queue, headers=headers or {})
    except Exception:
        try:  # without its key, a sweep queues it again once Redis is back
            _client().delete(_key(message_id))
        except redis.RedisError:
            pass
        raise


def fail_untaken_answers() -> int:
    """Fail the answers no worker took within the queue timeout; returns how many."""
    too_old = timezone.now() - datetime.timedelta(seconds=settings.API_QUEUE_TIMEOUT_SECONDS + REQUEUE_AFTER_SECONDS)
    failed = 0
    for message_id, conversation_id in Message.objects.filter(
            status=Message.Status.PENDING, created_at__lt=too_old).values_list("id", "conversation_id"):
        if Message.objects.filter(id=message_id, status=Message.Status.PENDING).update(
                status=Message.Status.FAILED, finish_reason="error", error=UNTAKEN_ERROR, updated_at=timezone.now()):
            failed += 1
            log.warning("no worker took answer %s within the queue timeout; failed it", message_id)
            announce_failure(message_id, conversation_id, UNTAKEN_ERROR)
    return failed


def requeue_lost_answers() -> int:
    """Queue again the pending answers whose task Redis lost (their key is gone); returns how many."""
    settled = timezone.now() - datetime.timedelta(seconds=REQUEUE_AFTER_SECONDS)
    waiting = list(Message.objects.filter(status=Message.Status.PENDING, created_at__lt=settled)
                   .values_list("id", "conversation_id", "conversation__model"))
    if not waiting:
        return 0
    client = _client()
    try:
        marks = client.mget([_key(message_id) for message_id, _, _ in waiting])
    except redis.RedisError:  # Redis cannot say which tasks it holds: queue nothing
        log.warning("lost-task sweep skipped: Redis unavailable")
        return 0
    requeued = 0
    for (message_id, conversation_id, model), mark in zip(waiting, marks, strict=True):
        # Whoever sets the key sends the task: of several sweeps at once, only one.
        if mark is not None or not client.set(_key(message_id), "1", px=_ttl_ms(), nx=True):
            continue
        if not Message.objects.filter(id=message_id, status=Message.Status.PENDING).exists():
            continue  # a worker took it (or Stop ended it) meanwhile
        try:
            queue = queue_for(get_model(model).celery_queue, conversation_id)
        except UnknownModel:
            continue  # no worker can answer it: the queue timeout fails it
        log.warning("the queued task of answer %s was lost (Redis lost its data?); queueing it again on %s",
                    message_id, queue)
        _send(message_id, queue)
        requeued += 1
    return requeued


def sweep() -> None:
    """The workers' periodic sweep: answers whose writer died, answers no worker took in time, and
    answers whose task was lost. Redis or the database away: it raises, and the next sweep retries."""
    fail_orphaned_answers()
    fail_untaken_answers()
    requeue_lost_answers()


def claim_row(message_id: object) -> bool:
    """Take a pending answer (pending → streaming); False if it is gone, taken, or finished."""
    return Message.objects.filter(id=message_id, status=Message.Status.PENDING).update(
        status=Message.Status.STREAMING, updated_at=timezone.now()) == 1


ORPHAN_ERROR = "The worker writing this answer stopped; the partial answer was kept. Regenerate to try again."


def fail_orphaned_answers(now: float | None = None) -> int:
    """Fail the orphaned answers: those left `streaming` by a worker that died (killed, out of memory, host lost),
    keeping their partial text, so no page or API client waits forever and the user can
    regenerate. An answer counts as orphaned when no live worker refreshes its writing key and
    its row has not changed for the key's lifetime. A redelivered task finds the row failed and
    skips it (claim() takes pending rows only), so no text is ever written twice."""
    stale_before = timezone.now() - datetime.timedelta(seconds=liveness.WRITING_TTL_SECONDS)
    candidates = list(Message.objects.filter(status=Message.Status.STREAMING, updated_at__lt=stale_before)
                      .values_list("id", "conversation_id"))
    if not candidates:
        return 0
    try:
        holders = liveness.writers([mid for mid, _ in candidates])
    except Exception:  # Redis cannot say who is alive: fail nothing
        log.warning("orphan sweep skipped: Redis unavailable", exc_info=True)
        return 0
    failed = 0
    for message_id, conversation_id in candidates:
        if holders.get(str(message_id)):
            continue
        done = Message.objects.filter(id=message_id, status=Message.Status.STREAMING,
                                      updated_at__lt=stale_before).update(
            status=Message.Status.FAILED, finish_reason="error", error=ORPHAN_ERROR, stop_requested=False,
            updated_at=timezone.now())
        if not done:
            continue
        failed += 1
        log.warning("answer %s was left streaming by a worker that stopped; failed it", message_id)
        announce_failure(message_id, conversation_id, ORPHAN_ERROR)
    return failed


def announce_failure(message_id: object, conversation_id: object, error: str) -> None:
    """Tell a conversation's open pages and API streams that a sweep failed one of its answers."""
    message = Message.objects.get(id=message_id)
    events.publish(conversation_id, error_frame("generation_failed", error, message_id=message_id))
    events.publish(conversation_id, message_frame(message))
    events.publish(conversation_id, done_frame(message))
