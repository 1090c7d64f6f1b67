"""One audit event per request to a view that declares itself audited (chat.core.view_declarations.audited)."""
from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from chat.audit import record as audit
from chat.core.view_declarations import AUDITED, declared


class AuditMiddleware:
    """Who, what, status, time, for the chat pages and their actions, uploads and files. Static files,
    probes and the admin (audited through its log) declare nothing; the /v1 views record their own
    events, with the model call's details (chat.api.views)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.monotonic()
        response = self.get_response(request)
        match = request.resolver_match
        if match is not None and declared(match.func, AUDITED, False):
            audit.record(
                "http_request", request=request, status=response.status_code,
                latency_ms=round((time.monotonic() - started) * 1000),
                conversation_id=match.kwargs.get("conversation_id"),
                detail={"method": request.method, "view": match.url_name},
            )
        return response
