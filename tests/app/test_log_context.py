"""Queueing an answer names it in its log lines and leaves nothing behind on the thread that committed."""
from __future__ import annotations

import logging

import pytest

from chat.conversations import actions
from chat.conversations.models import Conversation
from chat.core import log_context

pytestmark = pytest.mark.django_db(transaction=True)  # so the on-commit queueing really runs


def test_queueing_an_answer_leaves_the_committing_threads_log_context_as_it_was(alice, broker, caplog):
    chat = Conversation.objects.create(user=alice, model="deepseek-chat")
    before = dict(log_context.current())
    seen: list[dict[str, str]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(dict(log_context.current()))

    logger = logging.getLogger("chat.conversations.actions")
    recorder, level = Recorder(), logger.level
    logger.addHandler(recorder)
    logger.setLevel(logging.INFO)
    try:
        sent = actions.do_send_message(alice, chat.id, "Hello")
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)

    answer = sent.assistant_message
    assert {"conversation_id": str(chat.id), "message_id": str(answer.id), "model": "deepseek-chat"}.items() \
        <= seen[-1].items()
    assert dict(log_context.current()) == before
