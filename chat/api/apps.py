"""Django app config for chat.api."""
from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "chat.api"
    label = "api"
    verbose_name = "API"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat.api import completions  # noqa: F401  (the API history prune task)
