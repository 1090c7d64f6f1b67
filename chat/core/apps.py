"""Django app config for chat.core (no models: the helpers every other app may use)."""
from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "chat.core"
    label = "core"
    verbose_name = "Core"
