"""Log context: a request id (and the conversation, message and model) that follows a message from socket to engine."""
from __future__ import annotations

import datetime
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from celery.signals import task_postrun, task_prerun
from django.conf import settings
from django.core.signals import request_finished
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "FIELDS", "ContextFilter", "RequestIdMiddleware", "begin", "bind", "bound", "clean_request_id", "current",
    "json_formatter", "new_request_id", "plain_formatter", "request_id", "reset", "task_headers",
    "trusted_request_id",
]

FIELDS = ("request_id", "conversation_id", "message_id", "model")
HEADER = "X-Request-ID"
# AuditEvent.request_id holds 64 characters. A caller's id is echoed into logs and responses,
# so only plain ones are taken (no spaces or quotes to forge a log line with); others are replaced.
_GOOD_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,64}")

# One immutable mapping per context: asyncio tasks and asgiref's thread hops copy contexts, so each
# request, socket connection and Celery task sees only its own values.
_fields: ContextVar[Mapping[str, str]] = ContextVar("log_fields", default=MappingProxyType({}))


# ---- the context ----------------------------------------------------------------------------------
def current() -> Mapping[str, str]:
    """The fields known in this context (only those set)."""
    return _fields.get()


def request_id() -> str | None:
    return _fields.get().get("request_id")


def _strings(fields: Mapping[str, Any]) -> dict[str, str]:
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown log fields: {', '.join(sorted(unknown))}")
    return {name: str(value) for name, value in fields.items() if value is not None and value != ""}


def begin(**fields: Any) -> Token:
    """Start a fresh context (a new request or task): only these fields, nothing left from before."""
    return _fields.set(_strings(fields))


def bind(**fields: Any) -> Token:
    """Add fields to the current context (e.g. the message id once it exists)."""
    return _fields.set({**_fields.get(), **_strings(fields)})


def reset(token: Token) -> None:
    _fields.reset(token)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """`bind` for the duration of a block."""
    token = bind(**fields)
    try:
        yield
    finally:
        reset(token)


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: Any) -> str | None:
    """A caller's id when it is plain enough to log and echo, else None."""
    value = str(value or "").strip()
    return value if _GOOD_ID.fullmatch(value) else None


def trusted_request_id(value: Any) -> str | None:
    """A caller's X-Request-ID when a trusted proxy passed it (AUDIT_TRUSTED_PROXY_COUNT > 0) and it is
    plain enough to log and echo, else None. A client that picked the id could make its requests read,
    in the logs and the audit, as another's; a proxy the site trusts sets or replaces it instead."""
    if int(getattr(settings, "AUDIT_TRUSTED_PROXY_COUNT", 0) or 0) <= 0:
        return None
    return clean_request_id(value)


def task_headers() -> dict[str, str]:
    """Celery message headers that carry the current request id to the worker."""
    current_id = request_id()
    return {"request_id": current_id} if current_id else {}


# ---- logging --------------------------------------------------------------------------------------
class ContextFilter(logging.Filter):
    """Stamps every record with the context's fields; runs in the thread that logs, so it reads that
    thread's (or task's) context. Values passed with `extra=` win."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _fields.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class _UtcJsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
            timespec="microseconds").replace("+00:00", "Z")


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time (ISO-8601, UTC), level, logger, message, process and thread
    names, request_id (null when none), conversation_id/message_id/model when known, exception text,
    and any `extra=` fields."""
    return _UtcJsonFormatter(
        "{asctime}{levelname}{name}{message}{processName}{threadName}{request_id}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "processName": "process",
                       "threadName": "thread", "exc_info": "exception"},
    )


def plain_formatter() -> logging.Formatter:
    """The readable one-line format of `make run`, with the request id in brackets."""
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s",
                             defaults={"request_id": "-"})


# ---- HTTP -----------------------------------------------------------------------------------------
class RequestIdMiddleware:
    """Gives each HTTP request an id (a trusted proxy's X-Request-ID when plain, else a new one), puts it in
    the log context and on the request (where chat.core.request_meta.request_id finds it), and echoes it."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def _start(self, request: HttpRequest) -> str:
        value = trusted_request_id(request.headers.get(HEADER)) or new_request_id()
        request.audit_request_id = value  # type: ignore[attr-defined]
        # Not reset on the way out: Django logs a 4xx/5xx after the middleware returns, and a
        # streamed body is produced later still. The context is cleared when the response closes.
        begin(request_id=value)
        return value

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if iscoroutinefunction(self):
            return self._acall(request)
        value = self._start(request)
        response = self.get_response(request)
        response[HEADER] = value
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        value = self._start(request)
        response = await self.get_response(request)
        response[HEADER] = value
        return response


@receiver(request_finished)
def _request_finished(**kwargs: Any) -> None:
    """A sync server reuses its threads: what runs next on this one must not log this request's id."""
    begin()


# ---- Celery ---------------------------------------------------------------------------------------
@task_prerun.connect
def _task_started(task: Any = None, **kwargs: Any) -> None:
    """A worker thread runs task after task: each starts clean, with the id its sender put in the
    message headers (chat.conversations.actions and chat.api.completions send it)."""
    request = getattr(task, "request", None)
    begin(request_id=clean_request_id(getattr(request, "request_id", None)))


@task_postrun.connect
def _task_finished(**kwargs: Any) -> None:
    begin()
