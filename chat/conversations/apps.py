"""The conversations app: keeps the app label `chat` that its tables, migrations and permissions carry."""
from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "chat.conversations"
    label = "chat"
    verbose_name = "Chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat.conversations import uploads  # noqa: F401  (signal receivers)
