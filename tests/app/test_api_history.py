"""API requests are kept as hidden conversations for API_HISTORY_DAYS, then pruned with their images."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.utils import timezone

from chat.accounts.models import ApiUsage
from chat.api.completions import prune_api_history, prune_api_history_task
from chat.conversations import uploads
from chat.conversations.models import Conversation, Message
from tests.app.test_uploads import png

pytestmark = pytest.mark.django_db


def api_request(user, age_days: float, status: str = "done") -> Conversation:
    then = timezone.now() - dt.timedelta(days=age_days)
    conversation = Conversation.objects.create(user=user, model="deepseek-chat", source="api", updated_at=then)
    question = Message.objects.create(conversation=conversation, position=1, role="user", content="q")
    Message.objects.create(conversation=conversation, position=2, parent=question, role="assistant", status=status)
    return conversation


def test_it_prunes_old_finished_api_requests_with_their_images_and_keeps_the_rest(
        alice, settings, django_capture_on_commit_callbacks):
    old, recent = api_request(alice, 8), api_request(alice, 1)
    running = api_request(alice, 30, status="streaming")
    chat = Conversation.objects.create(user=alice, model="deepseek-chat", updated_at=timezone.now() - dt.timedelta(
        days=400))
    image = uploads.do_upload(alice, png())
    uploads.attach(alice, [image.id], old.messages.get(role="user").id)
    stored = Path(image.file.path)
    ApiUsage.objects.create(user=alice, day=dt.date.today(), requests=3)
    settings.API_HISTORY_DAYS = 7

    with django_capture_on_commit_callbacks(execute=True):  # files go once the deletion commits
        assert prune_api_history_task() == 1

    assert set(Conversation.objects.values_list("id", flat=True)) == {recent.id, running.id, chat.id}
    assert not stored.exists(), "the pruned request's image stayed on disk"
    assert ApiUsage.objects.get().requests == 3  # the usage (and the quota) stay


def test_it_refuses_a_negative_age():
    with pytest.raises(ValueError):
        prune_api_history(-1)


def test_the_retention_task_is_scheduled_daily_from_the_one_schedule_celery_reads(settings):
    from deepseek_web.celery import app as celery_app

    entry = settings.CELERY_BEAT_SCHEDULE["prune-api-history"]
    assert entry == {"task": "chat.api_completions.prune_api_history", "schedule": 24 * 3600}
    assert entry["task"] in celery_app.tasks
    assert celery_app.conf.beat_schedule == settings.CELERY_BEAT_SCHEDULE
