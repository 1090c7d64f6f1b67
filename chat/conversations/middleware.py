"""HTTP middleware: moderation of prompts that arrive in form posts, and an audit event per request."""
from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from chat.audit import log as audit
from chat.conversations.actions import check_moderated, get_conversation
from chat.core.errors import ChatError

# Views whose POST fields reach a model, by URL name → the fields to moderate. The socket's
# `send` goes through the same check (chat.conversations.actions.check_moderated) inside do_send_message.
MODERATED_FIELDS: dict[str, tuple[str, ...]] = {
    "conversation_settings": ("system_prompt",),
}
# Requests worth an audit event each: the chat pages and their actions, uploads and files (and the
# /v1 API when it comes). Static files, health probes and the admin (audited through its log) are not.
AUDITED_URL_NAMES = frozenset({
    "home", "new_conversation", "conversation", "rename_conversation", "delete_conversation",
    "conversation_settings", "export_conversation", "import_conversation", "upload_attachment",
    "attachment_file", "attachment_thumbnail",
})


class ModerationMiddleware:
    """Refuses a form post whose model-bound text trips a rule, before the view saves anything."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view, args, kwargs) -> HttpResponse | None:
        match = request.resolver_match
        fields = MODERATED_FIELDS.get(match.url_name if match else "", ())
        if request.method != "POST" or not fields or not self._owner_posts(request, kwargs):
            return None  # the view answers others (sign-in redirect, 404) before reading anything
        for field in fields:
            text = request.POST.get(field, "")
            if not text:
                continue
            try:
                check_moderated(request.user if request.user.is_authenticated else None, text, request=request,
                                conversation_id=kwargs.get("conversation_id"), field=field)
            except ChatError as exc:
                return render(request, "chat/blocked.html", {"notice": exc.message}, status=400)
        return None

    @staticmethod
    def _owner_posts(request: HttpRequest, kwargs: dict) -> bool:
        """Only the owner's posts are moderated: anyone else must not learn how the rules answer,
        nor write audit events about someone else's conversation."""
        if not request.user.is_authenticated:
            return False
        if "conversation_id" not in kwargs:
            return True
        try:
            get_conversation(request.user, kwargs["conversation_id"])
        except ChatError:
            return False
        return True


class AuditMiddleware:
    """One audit event per request to the chat, upload (and API) endpoints: who, what, status, time."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.monotonic()
        response = self.get_response(request)
        match = request.resolver_match
        if match is not None and match.url_name in AUDITED_URL_NAMES:
            audit.record(
                "http_request", request=request, status=response.status_code,
                latency_ms=round((time.monotonic() - started) * 1000),
                conversation_id=match.kwargs.get("conversation_id"),
                detail={"method": request.method, "view": match.url_name},
            )
        return response
