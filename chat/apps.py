"""Django app config for chat."""
from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        from . import uploads  # noqa: F401  (connects the signal that deletes files with their rows)
