"""API keys and their daily usage: what a user's programs sign in with and what they spent."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiKey(models.Model):
    """A user's key for the /v1 API. Only its SHA-256 is stored; the prefix identifies it on pages."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16)  # "sk-" and the first characters, shown to tell keys apart
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "chat_apikey"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'}) of {self.user_id}"


class ApiUsage(models.Model):
    """A user's /v1 use on one day (UTC): what the daily token quota and the usage page read."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_usage")
    day = models.DateField()
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        db_table = "chat_apiusage"
        ordering = ["-day"]
        constraints = [models.UniqueConstraint(fields=["user", "day"], name="api_usage_one_row_per_day")]

    def __str__(self) -> str:
        return f"{self.user_id} on {self.day}: {self.requests} requests"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
