"""Django app config for chat.worker."""
from django.apps import AppConfig


class WorkerConfig(AppConfig):
    name = "chat.worker"
    label = "worker"
    verbose_name = "Worker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat.worker import tasks  # noqa: F401  (registers the Celery tasks)
