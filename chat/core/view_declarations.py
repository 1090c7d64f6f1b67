"""What a view declares about itself — audited, moderated fields, a body cap — read by the middlewares.

As Django's own csrf_exempt and login_required do, the declaration sits on the view, so renaming or
adding a URL cannot silently switch a behaviour off (the middlewares used to match URL names).
Put these decorators outermost (above login_required and the like), where the middleware sees them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.http import HttpRequest, HttpResponse

View = TypeVar("View", bound=Callable[..., Any])

AUDITED = "deepseek_audited"
MODERATED_FIELDS = "deepseek_moderated_fields"
BODY_LIMIT = "deepseek_body_limit"


@dataclass(frozen=True)
class BodyLimit:
    """The largest body the view accepts (read when a request comes, so settings may change it), and
    how it answers one declared past it, before anything parses the body."""

    max_bytes: Callable[[], int]
    refuse: Callable[[HttpRequest, int], HttpResponse]


def audited(view: View) -> View:
    """One audit event per request to this view (chat.audit.middleware.AuditMiddleware)."""
    setattr(view, AUDITED, True)
    return view


def moderated(*fields: str) -> Callable[[View], View]:
    """The owner's POSTed `fields` go through moderation before the view runs
    (chat.conversations.middleware.ModerationMiddleware)."""

    def declare(view: View) -> View:
        setattr(view, MODERATED_FIELDS, tuple(fields))
        return view

    return declare


def body_limit(max_bytes: Callable[[], int], refuse: Callable[[HttpRequest, int], HttpResponse]
               ) -> Callable[[View], View]:
    """A POST whose Content-Length is past max_bytes() is answered by refuse(request, declared), unread
    (chat.core.body_limits.BodyLimitMiddleware)."""

    def declare(view: View) -> View:
        setattr(view, BODY_LIMIT, BodyLimit(max_bytes, refuse))
        return view

    return declare


def declared(view: Any, name: str, default: Any = None) -> Any:
    return getattr(view, name, default)
