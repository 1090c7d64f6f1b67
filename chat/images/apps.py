"""Django app config for chat.images."""
from django.apps import AppConfig


class ImagesConfig(AppConfig):
    name = "chat.images"
    label = "images"
    verbose_name = "Images"
    default_auto_field = "django.db.models.BigAutoField"
