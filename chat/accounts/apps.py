"""Django app config for chat.accounts."""
from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "chat.accounts"
    label = "accounts"
    verbose_name = "Accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Signal receivers: open sockets follow the session; a password change ends the other sessions.
        from chat.accounts import session_index, session_signals  # noqa: F401
