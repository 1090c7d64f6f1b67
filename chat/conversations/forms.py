"""Validation of what users type into forms: a conversation's settings."""
from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from chat.conversations.models import Conversation
from chat.core.served_models import all_models

SYSTEM_PROMPT_MAX = 4000


def _no_nul(value: str) -> None:
    if "\x00" in value:
        raise ValidationError(_("The text contains a NUL character, which cannot be stored."))


class ConversationSettingsForm(forms.ModelForm):
    """Model (configured ones only), system prompt and sampling; blank means the model's default."""

    model = forms.ChoiceField(label=_("Model"))
    system_prompt = forms.CharField(
        label=_("System prompt"), required=False, max_length=SYSTEM_PROMPT_MAX, strip=False,
        validators=[_no_nul], widget=forms.Textarea(attrs={"rows": 3}),
    )
    temperature = forms.FloatField(label=_("Temperature"), required=False, min_value=0.0, max_value=2.0,
                                   widget=forms.NumberInput(attrs={"step": "0.05"}))
    top_p = forms.FloatField(label=_("Top p"), required=False, min_value=0.01, max_value=1.0,
                             widget=forms.NumberInput(attrs={"step": "0.05"}))
    max_tokens = forms.IntegerField(label=_("Max tokens"), required=False, min_value=1)

    class Meta:
        model = Conversation
        fields = ["model", "system_prompt", "temperature", "top_p", "max_tokens"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "setting-%s")
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [(name, name) for name in all_models()]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        spec = all_models().get(data.get("model") or "")
        limit = spec.max_new_tokens if spec else None
        if limit is not None and data.get("max_tokens") and data["max_tokens"] > limit:
            self.add_error("max_tokens", _("%(model)s writes at most %(limit)d tokens per answer.")
                           % {"model": spec.name, "limit": limit})
        return data

