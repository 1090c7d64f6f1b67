"""The OpenAI/DeepSeek-compatible HTTP API: /v1/chat/completions, /v1/models, /v1/openapi.json.

Thin adapters: the key is checked (chat/accounts/api_keys.py), the body parsed (chat/api/requests.py),
limits applied (chat/accounts/usage.py), rows saved and the answer queued (chat/api/completions.py),
and the answer followed (chat/api/stream.py) into SSE chunks or one JSON object.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import nullcontext
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat.accounts import api_keys
from chat.accounts import usage as api_usage
from chat.api.completions import (
    check_completion,
    do_queue_completion,
    no_worker,
    wait_for_worker,
    worker_is_live,
)
from chat.api.openapi import openapi_document
from chat.api.requests import CompletionRequest, parse_body, parse_request, read_image_headers
from chat.api.stream import AnswerFollower, Finished, QueueTimeout, Text, Tick
from chat.audit import record as audit
from chat.conversations import actions, image_work
from chat.conversations.models import Message
from chat.core import errors, log_context, outage, request_meta
from chat.core.api_errors import ApiError
from chat.core.db_threads import in_db_pool
from chat.core.errors import ChatError
from chat.core.served_models import all_models

log = logging.getLogger(__name__)
FINISH_REASONS = ("stop", "length", "content_filter")
KEEPALIVE = b": keep-alive\n\n"


# ---- authentication and the body -------------------------------------------------------------
def _bearer(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "Authentication required: send your API key as “Authorization: Bearer sk-…”.",
                       "missing_api_key")
    return key.strip()


def authenticate(request: HttpRequest) -> tuple[Any, Any]:
    key = _bearer(request)
    found = api_keys.authenticate_key(key)
    if found is None:
        audit.record("api_key_rejected", request=request, verdict="rejected",
                     detail={"key": key[:api_keys.SHOWN_PREFIX] if key.startswith(api_keys.KEY_PREFIX) else ""})
        raise ApiError(401, "The API key is not valid (unknown, revoked, or its user is deactivated).",
                       "invalid_api_key")
    request.user = found.user  # the audit middleware and the audit events name the key's owner
    return found.user, found


def _too_large() -> ApiError:
    limit = settings.API_MAX_BODY_BYTES
    return ApiError(413, f"The request body is larger than the {limit} bytes allowed.", "request_too_large")


def _check_declared_size(request: HttpRequest) -> None:
    """A body declared past API_MAX_BODY_BYTES is refused by its Content-Length, before anything else."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > settings.API_MAX_BODY_BYTES:
        raise _too_large()


def _read_request(request: HttpRequest) -> CompletionRequest:
    """The body read (one sent without a Content-Length is cut at the cap here; the web server has capped it at
    SERVER_MAX_BODY_BYTES already), parsed and checked field by field, and its images' headers read against the
    per-request budget; no image is decoded. Runs on a pool thread: a large body's parse would otherwise hold
    every socket of the process."""
    limit = settings.API_MAX_BODY_BYTES
    raw = request.read(limit + 1)  # not request.body: its own cap is for forms, far below an image's
    if len(raw) > limit:
        raise _too_large()
    completion_request = parse_request(parse_body(raw))
    read_image_headers(completion_request)
    return completion_request


def _check_images_and_prompt(user: Any, completion_request: CompletionRequest, conversation_id: Any,
                             request: HttpRequest) -> None:
    """check_completion, its image decoding inside one of the user's image-processing places and within the
    user's pixels a minute (429 past either: chat/conversations/image_work.py)."""
    try:
        if completion_request.has_images():
            image_work.charge_pixels(user.id, completion_request.declared_pixels)  # before any decoding
        with image_work.processing(user.id) if completion_request.has_images() else nullcontext():
            check_completion(user, completion_request, conversation_id, request)
    except image_work.ImageWorkLimited as exc:
        raise ApiError(429, exc.message, exc.code, retry_after=exc.retry_after) from None


async def _keep_slot(slot: api_usage.Slot | None) -> None:
    """Move the request's concurrency slot's expiry on while it still runs (every SLOT_REFRESH_SECONDS)."""
    if slot is not None and slot.refresh_due():
        await sync_to_async(slot.refresh, thread_sensitive=False)()


def _admit(user_id: int) -> api_usage.Slot:
    try:
        return api_usage.admit(user_id)
    except api_usage.LimitExceeded as exc:
        raise ApiError(exc.status, exc.message, exc.code, retry_after=exc.retry_after) from None


# ---- response bodies ---------------------------------------------------------------------------
class Completion:
    """The fields every chunk or response of one completion shares."""

    def __init__(self, request: CompletionRequest, answer: Message | None, conversation_id: Any = None) -> None:
        self.request = request
        # An error sent before any answer existed (no worker came) carries the request's conversation id.
        self.id = f"chatcmpl-{(answer.id if answer is not None else conversation_id).hex}"
        self.created = int(answer.created_at.timestamp()) if answer is not None else int(time.time())
        self.model = request.spec.name
        self.reasoning = request.spec.reasoning

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    def text_delta(self, text: Text) -> dict[str, Any]:
        if not self.reasoning:
            return {"content": text.content}
        # DeepSeek's reasoner: both fields, the one not being written is null.
        return {"content": text.content or None, "reasoning_content": text.reasoning or None}

    def usage_chunk(self, message: Message) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(message)}

    def error_chunk(self, error: ApiError) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), "choices": [], **error.body()}

    def response(self, message: Message) -> dict[str, Any]:
        reply: dict[str, Any] = {"role": "assistant", "content": message.content, "refusal": None}
        if self.reasoning:
            reply["reasoning_content"] = message.reasoning or None
        return {**self._head("chat.completion"),
                "choices": [{"index": 0, "message": reply, "logprobs": None,
                             "finish_reason": message.finish_reason}],
                "usage": usage(message)}


def usage(message: Message) -> dict[str, int]:
    return {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens,
            "total_tokens": message.prompt_tokens + message.completion_tokens}


def _failure(finished: Finished) -> ApiError | None:
    """The error an ended answer reports, or None when it ended the way OpenAI's do."""
    message = finished.message
    if message is None:
        return ApiError(500, "The answer was removed while it was being written.", "answer_removed")
    if message.status == Message.Status.FAILED:
        return ApiError(500, finished.error or "The model failed while writing the answer.", "generation_failed")
    if message.status == Message.Status.CANCELLED or message.finish_reason not in FINISH_REASONS:
        return ApiError(500, "The answer was cancelled before it ended.", "cancelled")
    return None


def _unexpected(exc: Exception, doing: str, *args: Any) -> ApiError:
    """The error for an exception we did not expect: a database outage is a 503 to retry (one warning
    line); anything else is our bug, a 500 with an error id (chat.core.errors), logged with its
    traceback under that id. Call it inside the `except`."""
    found = outage.outage_error(exc)
    if found is not None:
        outage.log_outage(doing % args, found)
        return outage.api_error()
    error = errors.error_id()
    log.exception("%s failed (error id %s)", doing % args, error, extra={"error_id": error})
    return ApiError(500, errors.with_error_id("Something went wrong on the server; try again.", error),
                    "server_error")


def _queue_timeout() -> ApiError:
    return ApiError(503, "No worker took the request in time; retry later.", "queue_timeout",
                    retry_after=30)


def _events(follower: AnswerFollower):
    return follower.events(settings.API_KEEPALIVE_SECONDS, settings.API_QUEUE_TIMEOUT_SECONDS)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


# ---- the views -------------------------------------------------------------------------------------
@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return ApiError(405, "Use POST.", "method_not_allowed").response()
    slot = None
    follower = None
    # The audit events' id is the logs' and the task's (the same one RequestIdMiddleware set, when it ran).
    log_context.bind(request_id=request_meta.request_id(request))
    try:
        # The cheap checks first: the declared size, the key, the limits; then the body, read and parsed off the
        # event loop, with its images' headers and budget; then (for images) a worker; only then are images decoded.
        _check_declared_size(request)
        user, key = await in_db_pool(authenticate)(request)
        slot = await in_db_pool(_admit)(user.id)
        completion_request = await sync_to_async(_read_request, thread_sensitive=False)(request)
        spec = completion_request.spec
        live = await sync_to_async(worker_is_live, thread_sensitive=False)(spec)
        if not live and settings.API_WORKER_WAIT_SECONDS <= 0 and completion_request.has_images():
            raise no_worker(spec)  # its images are not decoded for nothing
        follower = AnswerFollower(uuid.uuid4())
        await follower.subscribe()
        await in_db_pool(_check_images_and_prompt)(user, completion_request, follower.conversation_id, request)
        if not live:
            # Workers starting, or one restarting: wait for one (bounded) rather than answer 503 at once.
            if settings.API_WORKER_WAIT_SECONDS <= 0:
                raise no_worker(spec)
            if completion_request.stream:
                return _event_stream(_stream_once_served(completion_request, follower, slot, user, key))
            async for _ in wait_for_worker(spec, settings.API_WORKER_WAIT_SECONDS, settings.API_KEEPALIVE_SECONDS):
                await _keep_slot(slot)
        answer = await _queue(completion_request, follower, user, key)
    except ApiError as exc:
        await _release(slot, follower)
        return exc.response()
    except Exception as exc:
        error = _unexpected(exc, "an API request before its answer was queued")
        await _release(slot, follower)
        return error.response()
    except asyncio.CancelledError:  # the client left while the request waited for a worker
        await _release(slot, follower)
        raise
    completion = Completion(completion_request, answer)
    if completion_request.stream:
        return _event_stream(_stream(completion, follower, slot, user))
    return await _whole(completion, follower, slot, user)


async def _queue(request: CompletionRequest, follower: AnswerFollower, user: Any, key: Any) -> Message:
    """Save and queue the checked request; the follower follows its answer from now on. Saving it holds its
    most tokens against today's quota (a 402/429 when they do not fit, and nothing is saved)."""
    try:
        answer = await in_db_pool(do_queue_completion)(user, key, request, follower.conversation_id)
    except api_usage.LimitExceeded as exc:
        raise ApiError(exc.status, exc.message, exc.code, retry_after=exc.retry_after) from None
    follower.bind(answer.id)
    # The rest of this request's lines name the answer too.
    log_context.bind(conversation_id=answer.conversation_id, message_id=answer.id, model=request.spec.name)
    return answer


def _event_stream(chunks: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(chunks, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a buffering proxy would hold every token back
    return response


async def _release(slot: api_usage.Slot | None, follower: AnswerFollower | None) -> None:
    if follower is not None:
        await follower.close()
    if slot is not None:
        await database_sync_to_async(slot.release)()


async def _stop_unfinished(user: Any, follower: AnswerFollower) -> None:
    """The client left (or we failed) before the answer ended: stop it, as Stop does in the page."""
    try:
        await database_sync_to_async(actions.do_request_stop)(user, follower.message_id)
    except ChatError:  # it had ended meanwhile
        pass
    except Exception as exc:  # the worker still cancels it once nobody watches the conversation
        found = outage.outage_error(exc)
        if found is not None:
            outage.log_outage(f"stopping answer {follower.message_id}", found)
        else:
            log.warning("could not stop answer %s", follower.message_id, exc_info=True)


async def _stream(completion: Completion, follower: AnswerFollower, slot: api_usage.Slot,
                  user: Any) -> AsyncIterator[bytes]:
    finished = False
    try:
        yield _sse(completion.chunk({"role": "assistant", "content": ""}))
        async for event in _events(follower):
            await _keep_slot(slot)
            if isinstance(event, Tick):
                yield b": keep-alive\n\n"
            elif isinstance(event, Text):
                yield _sse(completion.chunk(completion.text_delta(event)))
            elif isinstance(event, QueueTimeout):
                yield _sse(completion.error_chunk(_queue_timeout()))
                yield _sse("[DONE]")
            else:
                finished = True
                error = _failure(event)
                if error is not None:
                    yield _sse(completion.error_chunk(error))
                else:
                    yield _sse(completion.chunk({}, event.message.finish_reason))
                    if completion.request.include_usage:
                        yield _sse(completion.usage_chunk(event.message))
                yield _sse("[DONE]")
    except Exception as exc:  # the client still gets an error chunk, not a cut stream
        yield _sse(completion.error_chunk(_unexpected(exc, "the stream of answer %s", follower.message_id)))
        yield _sse("[DONE]")
    finally:
        # Reached on the normal end, and when the client disconnects (Django cancels the stream).
        if not finished:
            await _stop_unfinished(user, follower)
        await _release(slot, follower)


async def _stream_once_served(request: CompletionRequest, follower: AnswerFollower, slot: api_usage.Slot,
                              user: Any, key: Any) -> AsyncIterator[bytes]:
    """A streamed request that came while no worker served its model: a keep-alive every
    API_KEEPALIVE_SECONDS while it waits for one (API_WORKER_WAIT_SECONDS at most), then the answer as any
    stream. Past the bound the no_worker 503 arrives as an error chunk (the status line has gone), and
    nothing was written."""
    try:
        async for _ in wait_for_worker(request.spec, settings.API_WORKER_WAIT_SECONDS,
                                       settings.API_KEEPALIVE_SECONDS):
            await _keep_slot(slot)
            yield KEEPALIVE
        answer = await _queue(request, follower, user, key)
    except Exception as exc:
        await _release(slot, follower)
        error = exc if isinstance(exc, ApiError) else _unexpected(exc, "an API request waiting for a worker")
        yield _sse(Completion(request, None, follower.conversation_id).error_chunk(error))
        yield _sse("[DONE]")
        return
    except BaseException:  # the client left while it waited (the stream was closed or cancelled)
        await _release(slot, follower)
        raise
    answer_stream = _stream(Completion(request, answer), follower, slot, user)
    try:
        async for chunk in answer_stream:
            yield chunk
    finally:
        await answer_stream.aclose()  # its own clean-up (stop an unfinished answer, release) runs now


async def _whole(completion: Completion, follower: AnswerFollower, slot: api_usage.Slot, user: Any) -> HttpResponse:
    finished = False
    try:
        async for event in _events(follower):
            await _keep_slot(slot)
            if isinstance(event, QueueTimeout):
                return _queue_timeout().response()  # and the pending answer is cancelled below
            if isinstance(event, Finished):
                finished = True
                error = _failure(event)
                if error is not None:
                    return error.response()
                return JsonResponse(completion.response(event.message), json_dumps_params={"ensure_ascii": False})
        raise RuntimeError("the answer's events ended without Finished")
    except Exception as exc:
        return _unexpected(exc, "following answer %s", follower.message_id).response()
    finally:
        if not finished:
            await _stop_unfinished(user, follower)
        await _release(slot, follower)


@csrf_exempt
async def models(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return ApiError(405, "Use GET.", "method_not_allowed").response()
    try:
        await database_sync_to_async(authenticate)(request)
    except ApiError as exc:
        return exc.response()
    return JsonResponse({"object": "list", "data": [
        {"id": spec.name, "object": "model", "created": 0, "owned_by": "deepseek-web"}
        for spec in all_models().values()
    ]})


def openapi(request: HttpRequest) -> HttpResponse:
    """Public, like DeepSeek's and OpenAI's published documents: it holds no user data."""
    return JsonResponse(openapi_document(request.build_absolute_uri("/v1")))


@csrf_exempt
def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    return ApiError(404, f"No API endpoint at {request.path[:200]}.", "not_found").response()
