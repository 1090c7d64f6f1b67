"""Security-relevant account events into the audit log (Django's auth signals)."""
from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from . import audit


@receiver(user_logged_in)
def logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    audit.record("login", actor=user, request=request)


@receiver(user_logged_out)
def logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    audit.record("logout", actor=user, request=request)


@receiver(user_login_failed)
def login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    # The username tried is kept in detail (not a secret); the password never is (Django masks it).
    audit.record("login_failed", request=request, verdict="refused",
                 detail={"username": str(credentials.get("username", ""))[:150]})
