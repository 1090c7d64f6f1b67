"""Conversations and their messages; the Message row owns a generation's state."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Bumped on every new message, so the sidebar can list the most recent first.
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Per-conversation settings (validated by chat.conversations.forms); None means the model's default.
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Messages form a tree (edits and regenerations are siblings); this is the leaf of the
    # branch on show, so a reload shows the versions the user last picked.
    current_leaf = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Source(models.TextChoices):
        CHAT = "chat"  # the chat pages
        API = "api"  # one /v1/chat/completions request (not listed with the user's chats)

    source = models.CharField(max_length=8, choices=Source.choices, default=Source.CHAT)
    api_key = models.ForeignKey("accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="conversations")
    # Options of an API request that the chat pages do not offer.
    stop = models.JSONField(default=list, blank=True)  # strings that end the answer
    seed = models.BigIntegerField(null=True, blank=True)  # makes sampling repeatable

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "source", "-updated_at"], name="conversation_recent_by_source")]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.id}"

    @property
    def display_title(self) -> str:
        return self.title or "New chat"


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        PENDING = "pending"  # saved, generation queued
        STREAMING = "streaming"  # a worker claimed it and is writing
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    ACTIVE = (Status.PENDING, Status.STREAMING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # 1, 2, 3… within the conversation in order of creation (across branches); assigned under
    # the conversation's row lock.
    position = models.PositiveIntegerField()
    # The message this one answers or follows; None for the first. Siblings are versions.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DONE)
    finish_reason = models.CharField(max_length=32, blank=True)
    error = models.CharField(max_length=500, blank=True)
    client_id = models.CharField(max_length=64, blank=True)
    # The last delta seq whose text is included in `content`/`reasoning` (for resume).
    seq = models.PositiveIntegerField(default=0)
    # Set by Stop while a worker is streaming; the worker sees it at its next save.
    stop_requested = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["conversation", "position"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "position"], name="message_position_unique"),
            # At most one answer being generated per conversation, enforced by the database.
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(status__in=["pending", "streaming"]),
                name="one_active_reply_per_conversation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.position} in {self.conversation_id}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE


def _attachment_name(instance: Attachment, filename: str) -> str:
    # A random name: nothing of the user's file name reaches the storage (or a URL).
    return f"attachments/{uuid.uuid4().hex}.{filename.rsplit('.', 1)[-1]}"


class Attachment(models.Model):
    """An image a user uploaded, validated and re-encoded (chat/images/validation.py) before it was stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="attachments")
    # Set when a sent message takes it (an upload never sent stays unattached, counted in the quota).
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="attachments")
    file = models.FileField(upload_to=_attachment_name)
    thumbnail = models.FileField(upload_to=_attachment_name)
    sha256 = models.CharField(max_length=64)
    size = models.PositiveIntegerField()
    mime = models.CharField(max_length=32)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["owner", "created_at"], name="attachment_owner_recent")]

    def __str__(self) -> str:
        return f"{self.mime} {self.width}×{self.height} of {self.owner_id}"
