"""Database outages: a 503 that says so (JSON on the API, a short page elsewhere, 4503 on a socket), not a 500."""
from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils import translation
from django.views import defaults

from chat.core.api_errors import ApiError
from chat.core.context_processors import appearance

log = logging.getLogger(__name__)

# What Django raises (wrapping psycopg's and sqlite3's own) when the server is down, restarting,
# refusing connections or the connection dropped mid-query.
OUTAGE_ERRORS = (OperationalError, InterfaceError)
RETRY_AFTER_SECONDS = 5
# The socket's "try again later" (the page reconnects with backoff). Not the registry's 1013: daphne's
# autobahn lets an application send only 1000 or 3000-4999, so 4503, as 4401/4403 mirror 401/403.
CLOSE_TRY_AGAIN_LATER = 4503
API_MESSAGE = "The database is unavailable; retry in a few seconds."


def outage_error(exc: BaseException | None) -> BaseException | None:
    """The database error behind `exc` (itself or what it was raised from), or None."""
    for _ in range(4):  # a short chain: `raise X from db_error` in a wrapper or two
        if exc is None:
            return None
        if isinstance(exc, OUTAGE_ERRORS):
            return exc
        exc = exc.__cause__
    return None


def log_outage(where: str, exc: BaseException) -> None:
    # One line per request, no traceback: an outage fails every request the same way.
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    log.warning("database unavailable (%s): %s", where, reason[:300])


def is_api_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/") or path in ("/chat/completions", "/models")


def api_error() -> ApiError:
    return ApiError(503, API_MESSAGE, "database_unavailable", retry_after=RETRY_AFTER_SECONDS)


def outage_response(request: HttpRequest) -> HttpResponse:
    """The 503 for this request: the API's JSON error, or the page (rendered without the request's
    context processors, which would load the session and user from the database that is down)."""
    if is_api_path(request.path):
        response = api_error().response()
    else:
        with translation.override(translation.get_language_from_request(request)):
            html = render_to_string("503.html", {
                **appearance(request),
                "retry_after": RETRY_AFTER_SECONDS,
                "reload_url": request.get_full_path() if request.method == "GET" else "",
            })
        response = HttpResponse(html, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    # We logged the outage in one line; Django would add an ERROR line for the 503 (and as a 500,
    # from handler500, its traceback).
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


class DatabaseOutageMiddleware:
    """Turns a database outage in a view into the 503. Outages in other middleware (the session or
    user loaded in process_view, a session saved on the way out) never reach a middleware: Django
    turns each middleware's exception into a response at that layer, through `server_error` below."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        found = outage_error(exception)
        if found is None:
            return None
        log_outage(f"{request.method} {request.path[:200]}", found)
        return outage_response(request)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: the 503 when the uncaught error was a database outage, else Django's 500 page."""
    found = outage_error(sys.exc_info()[1])  # Django calls this inside its `except`
    if found is None:
        return defaults.server_error(request)
    log_outage(f"{request.method} {request.path[:200]}", found)
    return outage_response(request)


class SocketOutageGuard:
    """ASGI wrapper for the chat socket: the session and user are loaded from the database before the
    consumer exists, so an outage there would crash the handshake (a 500, a traceback, no close code).
    Instead the socket is accepted and closed with 4503, and the page retries."""

    def __init__(self, inner: Callable[..., Awaitable[None]]) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        state = {"connect_received": False, "accepted": False, "closed": False}

        async def watched_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "websocket.connect":
                state["connect_received"] = True
            elif message["type"] == "websocket.disconnect":
                state["closed"] = True  # nobody left to tell
            return message

        async def watched_send(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.accept":
                state["accepted"] = True
            elif message["type"] in ("websocket.close", "websocket.http.response.start"):
                state["closed"] = True
            await send(message)

        try:
            await self.inner(scope, watched_receive, watched_send)
        except Exception as exc:
            found = outage_error(exc)
            if found is None:
                raise
            log_outage(f"socket {scope.get('path', '')[:200]}", found)
            if state["closed"]:
                return
            if not state["connect_received"]:
                await receive()  # the handshake must be answered after it arrives
            if not state["accepted"]:
                await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER})
