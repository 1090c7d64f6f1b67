"""The Celery application, configured from Django settings (CELERY_* names)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")

app = Celery("deepseek_web")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["inference"])  # chat.audit's task registers when the chat app loads
