"""One audit event per request to a view that declares itself audited (chat.core.view_declarations.audited)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse

from chat.audit import record as audit
from chat.core.view_declarations import AUDITED, declared


class AuditMiddleware:
    """Who, what, status, time, for the chat pages and their actions, uploads and files. Static files,
    probes and the admin (audited through its log) declare nothing; the /v1 views record their own
    events, with the model call's details (chat.api.views)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        started = time.monotonic()
        response = self.get_response(request)
        self._record(request, response, started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        started = time.monotonic()
        response = await self.get_response(request)
        match = request.resolver_match
        if match is not None and declared(match.func, AUDITED, False):
            await sync_to_async(self._record)(request, response, started)
        return response

    @staticmethod
    def _record(request: HttpRequest, response: HttpResponse, started: float) -> None:
        match = request.resolver_match
        if match is not None and declared(match.func, AUDITED, False):
            audit.record(
                "http_request", request=request, status=response.status_code,
                latency_ms=round((time.monotonic() - started) * 1000),
                conversation_id=match.kwargs.get("conversation_id"),
                detail={"method": request.method, "view": match.url_name},
            )
