"""Django app config for chat.worker."""
from django.apps import AppConfig


class WorkerConfig(AppConfig):
    name = "chat.worker"
    label = "worker"
    verbose_name = "Worker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The engine's metrics show beside the answers' wherever this process shares its registry.
        from chat.core.metrics_registry import REGISTRY
        from inference import metrics

        REGISTRY.register(metrics.REGISTRY)
