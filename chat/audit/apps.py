"""Django app config for chat.audit."""
from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "chat.audit"
    label = "audit"
    verbose_name = "Audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat.audit import prune, signals  # noqa: F401  (the prune task; sign-in and admin events)
