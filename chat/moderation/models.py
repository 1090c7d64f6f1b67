"""The moderation rules staff edit in the admin."""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from chat.moderation.rules import pattern_error


def check_pattern(kind: str, pattern: str) -> None:
    """ValidationError for a pattern the moderation engine could not use (its own checks: they also refuse
    patterns that match everything or backtrack badly)."""
    error = pattern_error(kind, pattern)
    if error:
        raise ValidationError({"pattern": error})


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
        db_table = "chat_moderationrule"
        ordering = ["category", "id"]
        verbose_name = _("moderation rule")

    def __str__(self) -> str:
        return f"{self.get_kind_display()} “{self.pattern[:40]}” ({self.category})"
