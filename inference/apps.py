"""Django app config for inference (it has commands and tasks, no database models)."""
from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"
