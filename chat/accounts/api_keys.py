"""API keys: made once and shown once, stored as SHA-256, checked on every request, revoked at once."""
from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.translation import gettext as _

from chat.accounts.models import ApiKey
from chat.audit import record as audit
from chat.core.errors import ChatError

KEY_PREFIX = "sk-"
SHOWN_PREFIX = 10  # "sk-" and 7 characters of the secret: enough to tell keys apart, useless to guess with
NAME_MAX = 100


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def do_create_key(user: AbstractBaseUser, name: Any = "", request: Any = None) -> tuple[ApiKey, str]:
    """A new key for `user`: the row, and the key itself (never stored; shown to the user once)."""
    if not isinstance(name, str) or len(name) > NAME_MAX or "\x00" in name:
        raise ChatError("invalid_name", _("A key name is text of at most %(limit)d characters.") % {"limit": NAME_MAX})
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.objects.create(user=user, name=name.strip(), prefix=key[:SHOWN_PREFIX], key_hash=key_hash(key))
    audit.record("api_key_created", actor=user, request=request, detail={"key": row.prefix, "name": row.name})
    return row, key


def do_revoke_key(user: AbstractBaseUser, key_id: Any, request: Any = None) -> ApiKey:
    """Revoke one of the user's keys; it stops working with the next request."""
    try:
        row = ApiKey.objects.get(id=key_id, user=user)
    except (ApiKey.DoesNotExist, ValueError, TypeError, ValidationError):
        raise ChatError("not_found", _("No such key.")) from None
    if row.revoked_at is None:
        row.revoked_at = timezone.now()
        ApiKey.objects.filter(id=row.id, revoked_at=None).update(revoked_at=row.revoked_at)
        audit.record("api_key_revoked", actor=user, request=request, detail={"key": row.prefix})
    return row


def authenticate_key(key: Any) -> ApiKey | None:
    """The live key (its `user` active), or None: unknown, revoked, or the user deactivated."""
    if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    row = ApiKey.objects.select_related("user").filter(key_hash=key_hash(key), revoked_at=None).first()
    if row is None or not row.user.is_active:
        return None
    row.last_used_at = timezone.now()
    ApiKey.objects.filter(id=row.id).update(last_used_at=row.last_used_at)
    return row


def authenticate(key: Any) -> AbstractBaseUser | None:
    """The active owner of a live key, or None."""
    row = authenticate_key(key)
    return row.user if row is not None else None
