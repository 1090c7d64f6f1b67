"""API keys and daily token usage: what a user's programs sign in with, what they and the chat spent."""
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


class DailyTokens(models.Model):
    """A user's tokens on one day (UTC): spent (settled when an answer ends) and held for answers still
    being written (reserved up front), so concurrent requests cannot together overshoot the quota."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    reserved_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        abstract = True
        ordering = ["-day"]

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ApiUsage(DailyTokens):
    """A user's /v1 use on one day (UTC): what the daily token quota and the usage page read."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_usage")
    requests = models.PositiveIntegerField(default=0)

    class Meta(DailyTokens.Meta):
        db_table = "chat_apiusage"
        constraints = [models.UniqueConstraint(fields=["user", "day"], name="api_usage_one_row_per_day")]

    def __str__(self) -> str:
        return f"{self.user_id} on {self.day}: {self.requests} requests"


class ChatUsage(DailyTokens):
    """A user's chat answers (the socket) on one day (UTC): what CHAT_TOKENS_PER_DAY reads."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_usage")

    class Meta(DailyTokens.Meta):
        constraints = [models.UniqueConstraint(fields=["user", "day"], name="chat_usage_one_row_per_day")]

    def __str__(self) -> str:
        return f"{self.user_id} on {self.day}: {self.total_tokens} tokens"


class TokenReservation(models.Model):
    """Tokens held for one answer until it ends (`ref` is the answer's id). Its end settles it: the hold
    is released and the tokens actually spent are added. One that is never settled (a worker that died)
    is released once its answer is seen ended, and holds nothing past its day."""

    class Meter(models.TextChoices):
        API = "api"
        CHAT = "chat"

    ref = models.UUIDField(primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    meter = models.CharField(max_length=8, choices=Meter.choices)
    day = models.DateField()
    tokens = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return f"{self.tokens} {self.meter} tokens of {self.user_id} for {self.ref}"


class PendingSignup(models.Model):
    """An account made under SIGNUP_MODE=approval: inactive until staff approve it (the admin's action),
    which deletes this row. It tells "awaiting approval" apart from an account staff deactivated."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True,
                                related_name="pending_signup")
    requested_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return f"{self.user_id} awaiting approval since {self.requested_at:%Y-%m-%d %H:%M}"


class UserSession(models.Model):
    """One signed-in session of a user, by key: what lets a password change end the user's other sessions
    without decoding every session of the site (chat/accounts/session_index.py)."""

    session_key = models.CharField(max_length=40, primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return f"a session of {self.user_id} since {self.created_at:%Y-%m-%d %H:%M}"
