"""Django app config for chat.moderation."""
from django.apps import AppConfig


class ModerationConfig(AppConfig):
    name = "chat.moderation"
    label = "moderation"
    verbose_name = "Moderation"
    default_auto_field = "django.db.models.BigAutoField"
