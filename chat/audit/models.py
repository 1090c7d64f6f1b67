"""The audit log (an append-only hash chain) and its pruning checkpoints."""
from __future__ import annotations

from typing import Any, NoReturn

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

ZERO_HASH = "0" * 64


class AuditImmutable(Exception):
    """An attempt to change or delete audit rows outside retention pruning (chat.audit.prune.prune)."""


class ImmutableQuerySet(models.QuerySet):
    """A queryset that refuses updates and deletions; rows are added one by one and pruned only by retention."""

    def update(self, **kwargs: Any) -> NoReturn:
        raise AuditImmutable(f"{self.model.__name__} rows cannot be updated.")

    def delete(self) -> NoReturn:
        raise AuditImmutable(f"{self.model.__name__} rows cannot be deleted; retention pruning removes old ones.")

    def bulk_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AuditImmutable(f"{self.model.__name__} rows are added one at a time (chat.audit.record.record).")

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AuditImmutable(f"{self.model.__name__} rows cannot be updated.")

    def prune_through(self, last_id: int) -> int:
        """The one deletion path, for retention (chat.audit.prune.prune, which writes the checkpoint first)."""
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
    """One audited action. `hash` is an HMAC (AUDIT_CHAIN_KEY) over every other field, `prev_hash`
    included (chat.audit.chain.canonical); rows chained before the key have chain_scheme 1."""

    class Scheme(models.IntegerChoices):
        # Plain SHA-256 over the fields but id and actor: how rows were chained before the chain was
        # keyed (the migration that added this field marked every existing row so).
        UNKEYED = 1, _("SHA-256, unkeyed (before the key)")
        KEYED = 2, _("HMAC-SHA256 with AUDIT_CHAIN_KEY")

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
        # A client without an account passed AUDIT_ANONYMOUS_EVENTS_PER_MINUTE: its next events that
        # minute are not recorded (chat.audit.record).
        AUDIT_SUPPRESSED = "audit_suppressed", _("Audit events suppressed")

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # The user may be deleted later: the id stays (it is hashed), pointing at no one, and the name at
    # the time keeps the event meaningful. No database constraint, so the id can outlive the user.
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING,
                              db_constraint=False, related_name="+")
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
    # Default 1 for the rows that were there before; chat.audit.record writes every new row keyed.
    chain_scheme = models.PositiveSmallIntegerField(choices=Scheme.choices, default=Scheme.UNKEYED)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        db_table = "chat_auditevent"
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
        db_table = "chat_auditcheckpoint"
        ordering = ["-id"]
        get_latest_by = "id"

    def __str__(self) -> str:
        return f"checkpoint after event {self.last_event_id} ({self.created_at:%Y-%m-%d})"
