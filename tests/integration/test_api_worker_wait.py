"""/v1 while no worker serves the model (workers starting, or one restarting): the request waits for one,
up to API_WORKER_WAIT_SECONDS (a stream with `: keep-alive` comments), instead of an immediate 503; past
the bound it gets the 503 (`no_worker`) and nothing was saved. A live daphne, a real worker started
halfway through."""
from __future__ import annotations

import json
import queue
import threading
import time

import httpx
import pytest
from channels.testing import ChannelsLiveServerTestCase
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings

from chat.accounts import api_keys
from chat.conversations.models import Conversation, Message
from chat.core.redis_server import shared_client
from tests.support import waiting
from tests.support.browser import FreshConnectionsDaphne
from tests.support.worker import started_worker

pytestmark = pytest.mark.integration
QUEUE = "model.deepseek-chat"
KEEPALIVE = ": keep-alive"
DEADLINE_SECONDS = 120  # generous: states are waited for, this only stops a broken test


def wait_for(predicate, what, timeout: float = DEADLINE_SECONDS):
    return waiting.wait_for(predicate, what, timeout)


class StreamReader:
    """Reads one SSE response on a thread, line by line, so the test can act while it is open."""

    def __init__(self, url: str, key: str, body: dict) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.status: int | None = None
        self._thread = threading.Thread(target=self._read, args=(url, key, body), daemon=True)
        self._thread.start()

    def _read(self, url: str, key: str, body: dict) -> None:
        try:
            with httpx.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"},
                              timeout=DEADLINE_SECONDS) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if line:
                        self.lines.put(line)
        finally:
            self.lines.put(None)

    def until(self, predicate, what: str) -> str:
        """Read lines until one satisfies `predicate`; returns it."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the stream ended before {what}; it sent {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"timed out waiting for {what}; the stream sent {self.seen}")

    def payloads(self) -> list[str]:
        return [line.removeprefix("data: ") for line in self.seen if line.startswith("data: ")]


class WaitingTestCase(ChannelsLiveServerTestCase):
    ProtocolServerProcess = FreshConnectionsDaphne

    def setUp(self):
        client = shared_client(settings.REDIS_URL)
        # No worker announced by an earlier test; no limits counted by one.
        for name in [*client.scan_iter("deepseek:workers:*"), *client.scan_iter("deepseek:api:*")]:
            client.delete(name)
        client.delete(QUEUE)
        self.user = get_user_model().objects.create_user("waiting-user", password="a long pass phrase 9")
        self.key = api_keys.do_create_key(self.user, "tests")[1]

    @property
    def url(self) -> str:
        return f"{self.live_server_url}/v1/chat/completions"

    def body(self, **extra) -> dict:
        return {"model": "deepseek-chat", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
                **extra}

    def nothing_saved(self) -> bool:
        return not Conversation.objects.filter(user=self.user).exists() and not Message.objects.filter(
            conversation__user=self.user).exists()


@override_settings(API_WORKER_WAIT_SECONDS=DEADLINE_SECONDS, API_KEEPALIVE_SECONDS=0.3)
class WaitForAWorkerTest(WaitingTestCase):
    def test_a_stream_gets_keep_alives_while_no_worker_is_live_then_its_answer_once_one_starts(self):
        stream = StreamReader(self.url, self.key, self.body(stream=True))
        stream.until(lambda line: line == KEEPALIVE, "a keep-alive while no worker is live")
        stream.until(lambda line: line == KEEPALIVE, "a second keep-alive")
        assert stream.status == 200
        assert stream.payloads() == []  # comments only: no chunk before the answer exists
        assert self.nothing_saved()  # nothing is written while it waits
        with started_worker([QUEUE], concurrency=2):
            stream.until(lambda line: line == "data: [DONE]", "the answer's end")
        chunks = [json.loads(payload) for payload in stream.payloads()[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert "error" not in chunks[-1] and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        answer = Message.objects.get(conversation__user=self.user, role="assistant")
        assert answer.status == Message.Status.DONE
        assert chunks[0]["id"] == f"chatcmpl-{answer.id.hex}"
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == answer.content


@override_settings(API_WORKER_WAIT_SECONDS=1.0, API_KEEPALIVE_SECONDS=0.3)
class NoWorkerComesTest(WaitingTestCase):
    def test_past_the_bound_a_request_gets_the_503_and_nothing_is_saved(self):
        response = httpx.post(self.url, json=self.body(), headers={"Authorization": f"Bearer {self.key}"},
                              timeout=DEADLINE_SECONDS)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_worker"
        assert int(response.headers["retry-after"]) > 0
        assert self.nothing_saved()

    def test_past_the_bound_a_stream_gets_the_503_as_an_error_chunk_and_nothing_is_saved(self):
        stream = StreamReader(self.url, self.key, self.body(stream=True))
        stream.until(lambda line: line == "data: [DONE]", "the stream's end")
        assert KEEPALIVE in stream.seen
        error = json.loads(stream.payloads()[-2])
        assert error["error"]["code"] == "no_worker" and error["choices"] == []
        assert self.nothing_saved()
        # The request let go of its concurrency slot: the user's slots are empty again.
        slots = shared_client(settings.REDIS_URL).zcard(f"deepseek:api:inflight:{self.user.id}")
        assert slots == 0
