"""The deepseek-web project package: settings, ASGI/Celery entry points, URL roots."""
from deepseek_web.celery import app as celery_app

__all__ = ["celery_app"]
