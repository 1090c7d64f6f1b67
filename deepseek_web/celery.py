"""The Celery application, configured from Django settings (CELERY_* names)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")

app = Celery("deepseek_web")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The generation tasks live in chat.worker.tasks (names kept: "inference.tasks.generate"); the audit and
# API prune tasks register when their apps load.
app.autodiscover_tasks(["chat.worker"])
