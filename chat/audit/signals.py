"""Audit events from signals: sign-ins and lockouts (Django's auth, axes) and the admin's own change history."""
from __future__ import annotations

from typing import Any

from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_save
from django.dispatch import receiver

from chat.audit import record as audit


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


@receiver(user_locked_out)
def login_locked(sender: Any, request: Any, username: Any = None, **kwargs: Any) -> None:
    # axes sends this when the limit is reached and again for every attempt refused during the
    # lockout; those are audited as login_failed already, so only the start of a lockout is kept
    # (the one send that follows a counted failure).
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is None:
        return
    audit.record("login_locked", request=request, verdict="refused", detail={
        "username": str(username or "")[:150],
        "failures": failures,
        "cooloff_minutes": round(settings.AXES_COOLOFF_TIME.total_seconds() / 60),
    })


@receiver(post_save, sender="admin.LogEntry", dispatch_uid="chat.audit.signals.admin_change")
def admin_change(sender: Any, instance: Any, created: bool, raw: bool = False, **kwargs: Any) -> None:
    """Each admin LogEntry saved one by one (a bulk delete's are passed to record_log_entries directly)."""
    if created and not raw:
        audit.record_log_entries([instance])
