"""Structured logs: the JSON format, and one request id from the socket or API through the task to the engine."""
from __future__ import annotations

import datetime
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient, Client, override_settings

from chat.audit.models import AuditEvent
from chat.conversations.models import Conversation, Message
from chat.core import log_context
from deepseek_web.asgi import application
from tests.support.api_server import ApiServerTestCase
from tests.support.sockets import _session_cookie, open_socket, receive, receive_until, send

ROOT = Path(__file__).resolve().parents[2]
NEW_ID = re.compile(r"[0-9a-f]{32}")


class Collector(logging.Handler):
    """Keeps every record it is handed, stamped by the project's filter in the thread that logged it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(log_context.ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, logger: str, starts: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name == logger and r.getMessage().startswith(starts)]


@contextmanager
def collected(*names: str) -> Iterator[Collector]:
    """Records of these loggers (DEBUG and up) from every thread of this process."""
    collector = Collector()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(collector)
    try:
        yield collector
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(collector)
            logger.setLevel(level)


def json_lines(logger: logging.Logger) -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log_context.json_formatter())
    handler.addFilter(log_context.ContextFilter())
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return stream


# ---- the formats -------------------------------------------------------------------------------
def test_it_writes_one_json_object_per_line_with_the_context_and_the_exception():
    stream = json_lines(logging.getLogger("tests.json.full"))
    log = logging.getLogger("tests.json.full")
    with log_context.bound(request_id="req-1", conversation_id="c-1", message_id="m-1", model="deepseek-chat"):
        log.info("answer %s queued", "m-1")
        try:
            raise ValueError("bad \"quoted\"\nvalue")
        except ValueError:
            log.exception("it failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "answer m-1 queued"
    assert (first["level"], first["logger"]) == ("INFO", "tests.json.full")
    assert (first["process"], first["thread"]) == ("MainProcess", "MainThread")
    assert (first["request_id"], first["conversation_id"], first["message_id"], first["model"]) == (
        "req-1", "c-1", "m-1", "deepseek-chat")
    stamp = datetime.datetime.fromisoformat(first["time"])
    assert first["time"].endswith("Z") and stamp.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.UTC) - stamp).total_seconds()) < 60
    assert "exception" not in first
    assert second["level"] == "ERROR" and 'ValueError: bad "quoted"' in second["exception"]


def test_it_says_null_for_an_unknown_request_and_leaves_out_the_other_ids():
    stream = json_lines(logging.getLogger("tests.json.bare"))
    logging.getLogger("tests.json.bare").warning("no request here", extra={"tokens": 3})
    line = json.loads(stream.getvalue())
    assert line["request_id"] is None and line["tokens"] == 3
    assert not {"conversation_id", "message_id", "model"} & set(line)


def test_a_value_passed_with_extra_wins_over_the_context():
    stream = json_lines(logging.getLogger("tests.json.extra"))
    with log_context.bound(request_id="outer"):
        logging.getLogger("tests.json.extra").info("x", extra={"request_id": "inner"})
    assert json.loads(stream.getvalue())["request_id"] == "inner"


def test_the_plain_format_shows_the_request_id_in_brackets():
    record = logging.LogRecord("chat.conversations.actions", logging.INFO, __file__, 1, "queued", None, None)
    log_context.ContextFilter().filter(record)
    assert "INFO chat.conversations.actions [-]: queued" in log_context.plain_formatter().format(record)
    with log_context.bound(request_id="abc.3"):
        record = logging.LogRecord("chat.conversations.actions", logging.INFO, __file__, 1, "queued", None, None)
        log_context.ContextFilter().filter(record)
    assert "INFO chat.conversations.actions [abc.3]: queued" in log_context.plain_formatter().format(record)


def _log_a_line(log_format: str) -> subprocess.CompletedProcess:
    code = ("import django, logging; django.setup(); from chat.core import log_context; "
            "log_context.begin(request_id='r-9'); logging.getLogger('chat.demo').warning('hello')")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "deepseek_web.settings", "LOG_FORMAT": log_format}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_log_format_json_makes_the_site_log_json_and_a_bad_value_fails_loudly():
    done = _log_a_line("json")
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert (line["message"], line["request_id"], line["logger"]) == ("hello", "r-9", "chat.demo")
    plain = _log_a_line("plain")
    assert plain.returncode == 0 and plain.stderr.strip().endswith("WARNING chat.demo [r-9]: hello")
    bad = _log_a_line("xml")
    assert bad.returncode != 0 and "LOG_FORMAT='xml' is not one of plain, json" in bad.stderr


# ---- HTTP --------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_echoes_a_given_x_request_id_and_makes_one_when_absent(settings):
    settings.AUDIT_TRUSTED_PROXY_COUNT = 1  # a proxy's id (a client's is replaced: tests/app/test_log_context.py)
    client = Client()
    assert client.get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a:42").headers["X-Request-ID"] == "lb-7f3a:42"
    assert NEW_ID.fullmatch(client.get("/healthz").headers["X-Request-ID"])


@pytest.mark.django_db
@pytest.mark.parametrize("given", ["has space", "quote\"d", "x" * 65, "ünïcode"])
def test_it_replaces_an_id_it_would_not_log_as_is(given):
    response = Client().get("/healthz", HTTP_X_REQUEST_ID=given)
    assert NEW_ID.fullmatch(response.headers["X-Request-ID"])


@pytest.mark.django_db(transaction=True)
async def test_the_async_stack_echoes_it_too(settings):
    settings.AUDIT_TRUSTED_PROXY_COUNT = 1
    response = await AsyncClient().get("/healthz", headers={"X-Request-ID": "async-1"})
    assert response.headers["X-Request-ID"] == "async-1"


@pytest.mark.django_db
def test_a_requests_log_lines_and_audit_event_carry_its_id(alice, settings):
    settings.AUDIT_TRUSTED_PROXY_COUNT = 1
    client = Client()
    client.force_login(alice)
    with collected("django.request") as logs:
        response = client.get("/c/00000000-0000-0000-0000-000000000000/", HTTP_X_REQUEST_ID="page-7")
    assert response.status_code == 404 and response.headers["X-Request-ID"] == "page-7"
    assert [r.request_id for r in logs.records] == ["page-7"]  # Django's "Not Found" warning
    assert AuditEvent.objects.filter(action="http_request").latest("id").request_id == "page-7"


# ---- socket → task → engine ----------------------------------------------------------------------
@pytest.fixture
def worker(demo_model_path, running_worker, settings):
    settings.ENGINE_BATCHING = True  # the engine's lines come from the task's thread also when batching
    with running_worker(["model.deepseek-chat"], concurrency=2) as running:
        yield running


def _ids(records: list[logging.LogRecord]) -> set[tuple[str | None, str | None]]:
    return {(getattr(r, "request_id", None), getattr(r, "message_id", None)) for r in records}


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_one_socket_send_logs_one_request_id_in_the_consumer_the_task_and_the_engine(worker, alice, broker):
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, model="deepseek-chat")
    socket = await open_socket(alice, conversation.id)
    with collected("chat", "inference") as logs:
        await send(socket, {"type": "send", "content": "Hello there", "client_id": "c"})
        await receive(socket)
        answer_id = (await receive(socket))["message"]["id"]
        frames = await receive_until(socket, "done")
        await send(socket, {"type": "resume", "message_id": answer_id, "after_seq": 0})  # the second frame
        await receive_until(socket, "done")
    await socket.disconnect()
    assert frames[-1]["finish_reason"] in ("stop", "length")

    # Given one `send` frame: its id is the connection's id and the frame's number
    sent = logs.of("chat.conversations.consumers", "socket frame send")
    assert len(sent) == 1
    request_id = sent[0].request_id
    connection_id, number = request_id.split(".")
    assert NEW_ID.fullmatch(connection_id) and number == "1"
    assert sent[0].conversation_id == str(conversation.id)
    # Then the web side (queueing, in the database thread), the task and the engine (worker threads) carry it
    queued = logs.of("chat.conversations.actions", "queueing answer")
    task = logs.of("chat.worker.tasks", "writing answer")
    engine = logs.of("inference.engine", "generation started") + logs.of("inference.engine", "generation finished")
    assert len(queued) == len(task) == 1 and len(engine) == 2
    assert _ids(queued + task + engine) == {(request_id, answer_id)}
    assert {r.model for r in task + engine} == {"deepseek-chat"}
    assert task[0].threadName != sent[0].threadName and engine[0].threadName == task[0].threadName
    # and the next frame has the next number, the same connection
    assert logs.of("chat.conversations.consumers", "socket frame resume")[0].request_id == f"{connection_id}.2"
    # and the answer's audit event names the same request
    event = await database_sync_to_async(AuditEvent.objects.get)(action="model_call", message_id=answer_id)
    assert event.request_id == request_id


@pytest.mark.django_db(transaction=True)
async def test_a_handshakes_x_request_id_names_the_connection(alice, settings):
    settings.AUDIT_TRUSTED_PROXY_COUNT = 1
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, model="deepseek-chat")
    cookie = await sync_to_async(_session_cookie)(alice)
    socket = WebsocketCommunicator(application, f"/ws/chat/{conversation.id}/", headers=[
        (b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000"),
        (b"cookie", f"sessionid={cookie}".encode()), (b"x-request-id", b"edge-abc")])
    assert (await socket.connect(timeout=5))[0]
    with collected("chat") as logs:
        await send(socket, {"type": "select", "message_id": "not-a-uuid"})
        assert (await receive(socket))["type"] == "error"
    await socket.disconnect()
    assert logs.of("chat.conversations.consumers", "socket frame select")[0].request_id == "edge-abc.1"


# ---- API → task → engine -------------------------------------------------------------------------
@override_settings(AUDIT_TRUSTED_PROXY_COUNT=1)
class ApiRequestIdTest(ApiServerTestCase):
    def test_an_api_requests_x_request_id_reaches_the_workers_log_lines_and_the_audit(self):
        with collected("chat", "inference") as logs:
            response = httpx.post(f"{self.base_url}/chat/completions", timeout=60, headers={
                "Authorization": f"Bearer {self.key}", "X-Request-ID": "api-req-42"},
                json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "Hello"}]})
        assert response.status_code == 200, response.text
        assert response.headers["X-Request-ID"] == "api-req-42"
        answer = Message.objects.filter(role="assistant", conversation__user=self.user).latest("created_at")
        task = logs.of("chat.worker.tasks", "writing answer")
        engine = logs.of("inference.engine", "generation finished")
        assert len(task) == len(engine) == 1
        assert _ids(task + engine) == {("api-req-42", str(answer.id))}
        assert {r.conversation_id for r in task + engine} == {str(answer.conversation_id)}
        assert AuditEvent.objects.get(action="model_call", message_id=answer.id).request_id == "api-req-42"
