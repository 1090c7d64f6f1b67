"""Moderation of the model-bound text that arrives in form posts, for views that declare their fields."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from chat.conversations.actions import check_moderated, get_conversation
from chat.core.errors import ChatError
from chat.core.view_declarations import MODERATED_FIELDS, declared


class ModerationMiddleware:
    """Refuses a form post whose model-bound text trips a rule, before the view saves anything (the socket's
    `send` goes through the same check, chat.conversations.actions.check_moderated, in do_send_message)."""

    # Either way (its work is in process_view, which Django runs in a thread when the chain is async).
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view, args, kwargs) -> HttpResponse | None:
        fields = declared(view, MODERATED_FIELDS, ())
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
