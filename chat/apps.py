"""Django app config for chat."""
from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        from . import api_completions, audit_hooks, uploads  # noqa: F401  (signal receivers; the API prune task)
