"""Which sessions each user has signed in with, so a password change can end the others.

Sessions are stored by key and decoding every one to find a user's would read the whole table. Instead
each sign-in notes its key here (and a sign-out forgets it); `end_other_sessions` deletes the noted ones
through the configured session store, whatever its engine. A session made before this index existed is
still refused at its next request: it carries a hash of the old password (Django's session auth hash).
"""
from __future__ import annotations

import datetime as dt
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.dispatch import receiver
from django.utils import timezone

from chat.accounts.models import UserSession


def _store() -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore


def remember(user: Any, session_key: str | None) -> None:
    if not session_key:  # a store without keys (signed cookies): the auth hash alone ends them
        return
    UserSession.objects.update_or_create(session_key=session_key, defaults={"user": user})
    # Keys of sessions long expired go: the index stays as small as the user's live sessions.
    expired = timezone.now() - dt.timedelta(seconds=settings.SESSION_COOKIE_AGE)
    UserSession.objects.filter(user=user, created_at__lt=expired).delete()


def end_other_sessions(user: Any, keep_session_key: str | None) -> int:
    """Delete every session of `user` but `keep_session_key` (the one asking); how many were ended."""
    keys = list(UserSession.objects.filter(user=user).exclude(session_key=keep_session_key or "")
                .values_list("session_key", flat=True))
    store = _store()
    for key in keys:
        store(key).delete(key)
    UserSession.objects.filter(session_key__in=keys).delete()
    return len(keys)


@receiver(user_logged_in)
def _signed_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    if session is not None:
        remember(user, session.session_key)


@receiver(user_logged_out)
def _signed_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    if session is not None and session.session_key:
        UserSession.objects.filter(session_key=session.session_key).delete()
