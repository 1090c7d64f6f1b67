"""The audit log (an append-only hash chain), its pruning checkpoints, and the moderation rules staff edit."""
from __future__ import annotations

import re
from typing import Any, NoReturn

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

ZERO_HASH = "0" * 64


class AuditImmutable(Exception):
    """An attempt to change or delete audit rows outside retention pruning (chat.audit.prune)."""


class ImmutableQuerySet(models.QuerySet):
    """A queryset that refuses updates and deletions; rows are added one by one and pruned only by retention."""

    def update(self, **kwargs: Any) -> int:
        # Deleting a user sets `actor` to NULL through this method (on_delete=SET_NULL); the actor
        # is not part of an event's hash (its `actor_name` is), so that one update is allowed.
        if set(kwargs) == {"actor"} and kwargs["actor"] is None and hasattr(self.model, "actor"):
            return super().update(**kwargs)
        raise AuditImmutable(f"{self.model.__name__} rows cannot be updated.")

    def delete(self) -> NoReturn:
        raise AuditImmutable(f"{self.model.__name__} rows cannot be deleted; retention pruning removes old ones.")

    def bulk_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AuditImmutable(f"{self.model.__name__} rows are added one at a time (chat.audit.record).")

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AuditImmutable(f"{self.model.__name__} rows cannot be updated.")

    def prune_through(self, last_id: int) -> int:
        """The one deletion path, for retention (chat.audit.prune, which writes the checkpoint first)."""
        return self.filter(id__lte=last_id)._raw_delete(self.db)


class ImmutableModel(models.Model):
    """Rows that are written once: save() refuses updates and delete() refuses."""

    objects = ImmutableQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding or kwargs.get("force_update") or kwargs.get("update_fields"):
            raise AuditImmutable(f"{type(self).__name__} {self.pk} cannot be changed once written.")
        kwargs["force_insert"] = True  # never an UPDATE, even when a primary key was set by hand
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AuditImmutable(f"{type(self).__name__} {self.pk} cannot be deleted.")


class AuditEvent(ImmutableModel):
    """One audited action. `hash` covers every field but `id`, `actor` and `hash` (chat.audit.canonical)."""

    class Action(models.TextChoices):
        MODEL_CALL = "model_call", _("Model call")
        SIGNUP = "signup", _("Sign-up")
        LOGIN = "login", _("Login")
        LOGIN_FAILED = "login_failed", _("Failed login")
        LOGIN_LOCKED = "login_locked", _("Login locked out")
        LOGOUT = "logout", _("Logout")
        PASSWORD_CHANGE = "password_change", _("Password change")
        API_KEY_CREATED = "api_key_created", _("API key created")
        API_KEY_REVOKED = "api_key_revoked", _("API key revoked")
        API_KEY_REJECTED = "api_key_rejected", _("API key rejected")
        CONVERSATION_DELETED = "conversation_deleted", _("Conversation deleted")
        CONVERSATION_EXPORTED = "conversation_exported", _("Conversation exported")
        UPLOAD_REJECTED = "upload_rejected", _("Upload rejected")
        MODERATION_BLOCK = "moderation_block", _("Moderation block")
        ADMIN_CHANGE = "admin_change", _("Admin change")
        HTTP_REQUEST = "http_request", _("HTTP request")

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # The user may be deleted later: the name at the time keeps the event meaningful (and hashed).
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64, choices=Action.choices, db_index=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=256, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    conversation_id = models.UUIDField(null=True, blank=True)
    message_id = models.UUIDField(null=True, blank=True)
    model = models.CharField(max_length=100, blank=True)
    # Digests only: the text itself stays in the conversation (and goes when it is deleted).
    input_sha256 = models.CharField(max_length=64, blank=True)
    output_sha256 = models.CharField(max_length=64, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    verdict = models.CharField(max_length=32, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = _("audit event")

    def __str__(self) -> str:
        return f"#{self.id} {self.action} by {self.actor_name or '-'} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class AuditCheckpoint(ImmutableModel):
    """Written by each retention prune: the chain goes on verifiably from the last pruned event."""

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    cutoff = models.DateTimeField()
    last_event_id = models.BigIntegerField()
    last_hash = models.CharField(max_length=64)
    pruned = models.PositiveIntegerField()

    class Meta:
        ordering = ["-id"]
        get_latest_by = "id"

    def __str__(self) -> str:
        return f"checkpoint after event {self.last_event_id} ({self.created_at:%Y-%m-%d})"


def check_pattern(kind: str, pattern: str) -> None:
    """ValidationError for a pattern the moderation engine could not use (the engine's own checks when
    chat.moderation is installed: they also refuse patterns that match everything or backtrack badly)."""
    try:
        from .moderation import pattern_error
    except ImportError:
        pattern_error = None
    if pattern_error is not None:
        error = pattern_error(kind, pattern)
        if error:
            raise ValidationError({"pattern": error})
        return
    if not pattern.strip():
        raise ValidationError({"pattern": _("The pattern is empty.")})
    if kind == ModerationRule.Kind.REGEX:
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as error:
            raise ValidationError(
                {"pattern": _("This regular expression does not compile: %(error)s") % {"error": error}}
            ) from None


class ModerationRule(models.Model):
    class Kind(models.TextChoices):
        KEYWORD = "keyword", _("Keyword")
        REGEX = "regex", _("Regular expression")

    class Category(models.TextChoices):
        VIOLENCE = "violence", _("Violence")
        SELF_HARM = "self-harm", _("Self-harm")
        CHILD_SAFETY = "child-safety", _("Child safety")
        CREDENTIALS = "credentials", _("Credentials")
        PII = "pii", _("Personal data")
        CUSTOM = "custom", _("Custom")

    class AppliesTo(models.TextChoices):
        INPUT = "input", _("User input")
        OUTPUT = "output", _("Model output")
        BOTH = "both", _("Both")

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.KEYWORD)
    pattern = models.TextField()
    category = models.CharField(max_length=32, choices=Category.choices, default=Category.CUSTOM)
    applies_to = models.CharField(max_length=8, choices=AppliesTo.choices, default=AppliesTo.BOTH)
    enabled = models.BooleanField(default=True)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["category", "id"]
        verbose_name = _("moderation rule")

    def __str__(self) -> str:
        return f"{self.get_kind_display()} “{self.pattern[:40]}” ({self.category})"
