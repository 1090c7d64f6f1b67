"""An API request becomes rows and a queued answer: the same road as a chat message (DESIGN.md).

The request's messages are saved as a hidden conversation (source "api"), moderated first, then
answered by the same Celery task, engine, moderation of the output and audit as the chat pages.
"""
from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis
from asgiref.sync import sync_to_async
from celery import shared_task
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from chat.accounts.models import ApiKey
from chat.api import image_parts
from chat.api.requests import CompletionRequest, read_images
from chat.conversations import actions
from chat.conversations.models import Conversation, Message
from chat.core.api_errors import ApiError
from chat.core.errors import ChatError
from chat.core.worker_routing import HEARTBEAT_SECONDS, live_workers
from inference.registry import ModelSpec

WORKER_CHECK_SECONDS = 1.0  # how often a request waiting for a worker reads the heartbeats again


def no_worker(spec: ModelSpec) -> ApiError:
    return ApiError(503, f"No worker is serving {spec.name} right now; retry shortly.", "no_worker",
                    retry_after=int(HEARTBEAT_SECONDS * 2))


def worker_is_live(spec: ModelSpec) -> bool:
    """Whether a worker for the model announced itself recently; a 503 when Redis cannot say."""
    try:
        return bool(live_workers(spec.celery_queue))
    except redis.RedisError:
        raise ApiError(503, "The queue is unreachable; retry shortly.", "service_unavailable",
                       retry_after=int(HEARTBEAT_SECONDS * 2)) from None


def check_workers(spec: ModelSpec) -> None:
    """503 unless a worker for the model announced itself recently (it would wait in the queue)."""
    if not worker_is_live(spec):
        raise no_worker(spec)


async def wait_for_worker(spec: ModelSpec, seconds: float, tick_seconds: float) -> AsyncIterator[None]:
    """Wait until a worker for the model is live (workers starting, or one restarting): yields after each
    `tick_seconds` of waiting (a stream sends a keep-alive then), and raises the no_worker 503 once
    `seconds` have passed without one. The heartbeats are read every WORKER_CHECK_SECONDS on a pool
    thread, which is let go in between: a waiting request holds no thread."""
    is_live = sync_to_async(worker_is_live, thread_sensitive=False)
    started = last_tick = time.monotonic()
    while not await is_live(spec):
        now = time.monotonic()
        if now - started >= seconds:
            raise no_worker(spec)
        if now - last_tick >= tick_seconds:
            last_tick = now
            yield
            now = time.monotonic()
        until = min(started + seconds, last_tick + tick_seconds)
        await asyncio.sleep(max(0.0, min(WORKER_CHECK_SECONDS, until - now)))


def check_moderation(user: AbstractBaseUser, request: CompletionRequest, http_request: Any,
                     conversation_id: uuid.UUID) -> None:
    for index, message in enumerate(request.messages):
        if not message.content:
            continue
        try:
            actions.check_moderated(user, message.content, request=http_request, conversation_id=conversation_id,
                                    model=request.spec.name, field=f"messages[{index}].content")
        except ChatError as exc:
            raise ApiError(400, exc.message, "content_filter", "messages") from None


def check_context(request: CompletionRequest) -> None:
    """The whole conversation must fit with room for the answer: an API client sent every message
    on purpose, so none is silently dropped (the chat pages drop the oldest turns instead)."""
    spec = request.spec
    try:
        actions.check_fits(spec, [{"role": m.role, "content": m.content} for m in request.messages], request.max_tokens)
    except actions.PromptTooLong as exc:
        raise ApiError(400, f"This model's maximum context length is {exc.max_context} tokens. The messages "
                            f"take {exc.tokens} tokens and the answer may take {exc.answer_tokens}.",
                       "context_length_exceeded", "messages") from None


def _store_images(user: AbstractBaseUser, request: CompletionRequest) -> dict[int, list[Any]]:
    """The images read_images validated, stored as the user's (within the quota); all or none."""
    stored: dict[int, list[Any]] = {}
    try:
        for index, message in enumerate(request.messages):
            if message.images:
                stored[index] = image_parts.store_images(user, message.images)
    except ChatError as exc:
        for attachments in stored.values():
            for attachment in attachments:
                attachment.delete()
        raise ApiError.from_chat_error(exc, f"messages[{index}].content") from None
    return stored


def check_completion(user: AbstractBaseUser, request: CompletionRequest, conversation_id: uuid.UUID,
                     http_request: Any = None) -> None:
    """The checks a request fails with its own 4xx, whether or not a worker is alive (not a 503 to retry in
    vain): the images decoded and validated (invalid_image_url, not_an_image, too_large…), moderation, and
    the context length. Nothing is written."""
    read_images(request)
    check_moderation(user, request, http_request, conversation_id)
    check_context(request)


def do_start_completion(user: AbstractBaseUser, api_key: ApiKey | None, request: CompletionRequest,
                        conversation_id: uuid.UUID, http_request: Any = None) -> Message:
    """Check, save and queue one completion; returns the pending answer. Nothing is written when a
    check fails (a 503 when no worker is live), and stored images are removed again if saving fails."""
    check_completion(user, request, conversation_id, http_request)
    check_workers(request.spec)
    return do_queue_completion(user, api_key, request, conversation_id)


def do_queue_completion(user: AbstractBaseUser, api_key: ApiKey | None, request: CompletionRequest,
                        conversation_id: uuid.UUID) -> Message:
    """Save and queue a checked completion (check_completion); returns the pending answer. Stored images
    are removed again if saving fails."""
    images = _store_images(user, request)
    try:
        answer = _save(user, api_key, request, conversation_id, images)
    except BaseException:
        for attachments in images.values():
            for attachment in attachments:
                attachment.delete()
        raise
    return answer


def _save(user: AbstractBaseUser, api_key: ApiKey | None, request: CompletionRequest, conversation_id: uuid.UUID,
          images: dict[int, list[Any]]) -> Message:
    """The request as a hidden conversation (source "api", with its sampling settings) and a queued answer."""
    conversation = Conversation(
        id=conversation_id, user=user, model=request.spec.name, source=Conversation.Source.API, api_key=api_key,
        temperature=request.temperature, top_p=request.top_p, max_tokens=request.max_tokens, stop=request.stop,
        seed=request.seed,
    )
    turns = [actions.Turn(m.content, role=m.role, images=[a.id for a in images.get(index, ())])
             for index, m in enumerate(request.messages)]
    return actions.do_queue_answer(conversation, request.spec, None, turns).assistant_message


def prune_api_history(older_than_days: int) -> int:
    """Delete finished API requests (their messages and images) older than `older_than_days` days.
    Usage counts (ApiUsage) and audit events stay. Returns how many requests were deleted."""
    if older_than_days < 0:
        raise ValueError("older_than_days must be 0 or more")
    cutoff = timezone.now() - datetime.timedelta(days=older_than_days)
    doomed = Conversation.objects.filter(source=Conversation.Source.API, updated_at__lt=cutoff).exclude(
        messages__status__in=Message.ACTIVE)
    count = 0
    for conversation in doomed.iterator():
        conversation.delete()  # one by one: each attachment's file goes with its row (chat/conversations/uploads.py)
        count += 1
    return count


@shared_task(name="chat.api_completions.prune_api_history")
def prune_api_history_task() -> int:
    """The daily retention task (settings.CELERY_BEAT_SCHEDULE): keeps API_HISTORY_DAYS days of API requests."""
    from django.conf import settings

    return prune_api_history(settings.API_HISTORY_DAYS)
