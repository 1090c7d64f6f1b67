"""Django app config for chat.devtools."""
from django.apps import AppConfig


class DevtoolsConfig(AppConfig):
    name = "chat.devtools"
    label = "devtools"
    verbose_name = "Developer tools"
    default_auto_field = "django.db.models.BigAutoField"
