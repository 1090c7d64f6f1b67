"""The admin of moderation rules: a pattern the engine cannot use is refused as the form's error."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from chat.audit.admin import AuditedDeletionsMixin
from chat.moderation.models import ModerationRule, check_pattern


class ModerationRuleForm(forms.ModelForm):
    class Meta:
        model = ModerationRule
        fields = ("kind", "pattern", "category", "applies_to", "enabled", "note")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Kept as typed: a space at either end can matter to a keyword or a regex.
        self.fields["pattern"].strip = False

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if "kind" in cleaned and cleaned.get("pattern") is not None:
            check_pattern(cleaned["kind"], cleaned["pattern"])
        return cleaned



@admin.register(ModerationRule)
class ModerationRuleAdmin(AuditedDeletionsMixin, admin.ModelAdmin):
    form = ModerationRuleForm
    list_display = ("pattern", "kind", "category", "applies_to", "enabled", "updated_at")
    list_filter = ("enabled", "kind", "category", "applies_to")
    search_fields = ("pattern", "note")
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("kind", "pattern", "category", "applies_to", "enabled")}),
        (_("Notes"), {"fields": ("note", "created_at", "updated_at")}),
    )
