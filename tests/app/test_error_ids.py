"""Failures show the user a stable sentence and an error id, never internals (model paths, exception
text, an upstream's body); the log line has the detail and the same id."""
from __future__ import annotations

import logging
import re

import pytest

from chat.conversations.models import Conversation, Message
from chat.core import log_context
from chat.core.api_errors import ApiError

pytestmark = pytest.mark.django_db
ERROR_ID = re.compile(r"\(error id: ([A-Za-z0-9._:@/+=-]+)\)")


def pending_answer(user, model: str) -> Message:
    conversation = Conversation.objects.create(user=user, model=model)
    question = Message.objects.create(conversation=conversation, position=1, role=Message.Role.USER, content="Hi")
    return Message.objects.create(conversation=conversation, position=2, parent=question,
                                  role=Message.Role.ASSISTANT, status=Message.Status.PENDING)


def test_a_model_that_cannot_load_shows_no_path_but_an_error_id_the_log_line_shares(
        alice, settings, demo_model_path, tmp_path, broker, caplog):
    from chat.worker import tasks

    secret_place = tmp_path / "srv-private-weights" / "no-weights-here"
    settings.DEEPSEEK_MODELS = [
        {"name": "deepseek-chat", "path": str(demo_model_path), "max_context": 2048, "max_new_tokens": 32},
        {"name": "broken", "path": str(secret_place)},
    ]
    answer = pending_answer(alice, "broken")
    token = log_context.begin()  # as a task starts: no request id came with it
    try:
        with caplog.at_level(logging.ERROR, logger="chat.worker.tasks"):
            tasks.generate(str(answer.id))
    finally:
        log_context.reset(token)

    saved = Message.objects.get(id=answer.id)
    assert (saved.status, saved.finish_reason) == ("failed", "error")
    assert "srv-private-weights" not in saved.error and str(tmp_path) not in saved.error
    assert "broken" in saved.error  # the model the user chose, by its name
    error_id = ERROR_ID.search(saved.error).group(1)
    [record] = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert str(secret_place) in record.getMessage() and error_id in record.getMessage()
    assert Message.objects.filter(conversation=saved.conversation).count() == 2  # nothing else written


def test_a_request_id_serves_as_the_error_id(alice, settings, tmp_path, broker, caplog):
    from chat.worker import tasks

    settings.DEEPSEEK_MODELS = [{"name": "broken", "path": str(tmp_path / "nothing")}]
    answer = pending_answer(alice, "broken")
    token = log_context.begin(request_id="req-abc.3")
    try:
        tasks.generate(str(answer.id))
    finally:
        log_context.reset(token)
    assert ERROR_ID.search(Message.objects.get(id=answer.id).error).group(1) == "req-abc.3"


def test_an_unexpected_api_failure_is_a_500_with_an_error_id_and_its_traceback_in_the_log(caplog):
    from chat.api.views import _unexpected

    token = log_context.begin(request_id="api-req-9")
    try:
        with caplog.at_level(logging.ERROR, logger="chat.api.views"):
            try:
                raise RuntimeError("/srv/models/secret-path exploded")
            except RuntimeError as exc:
                error = _unexpected(exc, "an API request")
    finally:
        log_context.reset(token)
    assert isinstance(error, ApiError) and error.status == 500
    body = error.body()["error"]
    assert "secret-path" not in body["message"] and "api-req-9" in body["message"]
    [record] = [r for r in caplog.records if getattr(r, "error_id", None) == "api-req-9"]
    assert "secret-path" in record.exc_text or "secret-path" in str(record.exc_info[1])
