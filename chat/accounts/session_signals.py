"""What ends a user's sessions, told to the user's open sockets (chat/accounts/session_epochs.py): a logout,
a new password, a deactivation, a deleted account.

Every road this site has for ending a live session goes through one of these: the logout view (Django's
`user_logged_out`), a password change from any page, the admin or `changepassword` (the user's row is
saved with a new hash), and the admin's active flag. Code that deletes sessions some other way calls
session_epochs.sessions_changed itself. (A receiver on the Session model's deletes is not used: it would
make `clearsessions` load every expired row, and a socket re-reads its session every
SESSION_RECHECK_SECONDS anyway.)
"""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from chat.accounts.session_epochs import sessions_changed

# The fields whose change ends a user's sessions: the hash (a session carries a hash of it) and the flag.
WATCHED_FIELDS = ("password", "is_active")


def _after_commit(user_id: Any, ended_session_key: str | None = None) -> None:
    """Once the change is committed, so a socket that re-checks at once reads it."""
    transaction.on_commit(lambda: sessions_changed(user_id, ended_session_key))


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None and request is not None:
        # Sent before the session is flushed: the key names the sockets to close without a database read.
        _after_commit(user.pk, getattr(request, "session", None) and request.session.session_key)


@receiver(pre_save, sender=get_user_model())
def _note_before(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    """Remember the stored values of the watched fields (a login saves only last_login: no query then)."""
    instance._sessions_before = None
    if instance.pk is None or kwargs.get("raw"):
        return
    if update_fields is not None and not set(update_fields) & set(WATCHED_FIELDS):
        return
    instance._sessions_before = sender.objects.filter(pk=instance.pk).values_list(*WATCHED_FIELDS).first()


@receiver(post_save, sender=get_user_model())
def _saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    before = getattr(instance, "_sessions_before", None)
    if created or before is None:
        return
    if before != tuple(getattr(instance, field) for field in WATCHED_FIELDS):
        _after_commit(instance.pk)


@receiver(post_delete, sender=get_user_model())
def _deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    _after_commit(instance.pk)
