"""Scale-out on loopback: two daphne processes behind one Redis, two worker processes sharing one
model's queue with conversation-sticky routing, and a worker killed mid-answer.

The workers are real `celery worker` processes (as in production), pointed at the test database
and Redis through the environment, each loading the demo model.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from functools import partial

import pytest
from channels.testing import ChannelsLiveServerTestCase
from channels.testing.live import make_application, set_database_connection
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from websockets.sync.client import connect

from chat.audit.models import AuditEvent
from chat.conversations import actions
from chat.conversations.lifecycle import ORPHAN_ERROR
from chat.conversations.models import Conversation, Message
from chat.core.worker_routing import live_workers, private_queue, queue_for
from chat.devtools.resilience.stack import database_url
from tests.support.browser import FreshConnectionsDaphne

pytestmark = [pytest.mark.integration]
QUEUE = "model.deepseek-chat"


def long_answers() -> list[dict]:
    """Greedy (no early end-of-sentence) and long enough to kill a worker in the middle."""
    return [{"name": "deepseek-chat", "path": str(settings.DEMO_MODELS_DIR / "demo-chat"), "max_context": 2048,
             "max_new_tokens": 1900, "temperature": 0, "demo": True}]


class WorkerProcess:
    """One `celery worker` for the demo model's queue, as `make run` or compose starts it."""

    def __init__(self, name: str) -> None:
        self.hostname = f"{name}@scale-test"
        env = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": settings.REDIS_URL,
               "DATA_DIR": str(settings.DATA_DIR), "DEEPSEEK_MODELS": json.dumps(long_answers()),
               "DJANGO_SETTINGS_MODULE": "deepseek_web.settings"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-P", "threads", "-c", "2",
             "-Q", QUEUE, "-n", self.hostname, "--loglevel", "WARNING", "--without-mingle", "--without-gossip"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def wait_live(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.hostname not in live_workers(QUEUE):
            assert self.process.poll() is None, self.process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"{self.hostname} never announced itself"
            time.sleep(0.2)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)  # no goodbye: no shutdown handler runs
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def conversation_for(user, worker: str, max_tokens: int | None = 40) -> Conversation:
    """A conversation whose id the rendezvous hash sends to `worker` (both workers live); short
    answers unless `max_tokens` is None."""
    while True:
        cid = uuid.uuid4()
        if queue_for(QUEUE, cid) == private_queue(QUEUE, worker):
            conversation = Conversation.objects.create(id=cid, user=user, model="deepseek-chat", max_tokens=max_tokens)
            watch(conversation)
            return conversation


def watch(conversation: Conversation) -> None:
    """Mark the conversation watched (as an open page does), so its long answers are not cancelled
    as abandoned while the test waits on the rows."""
    from chat.core.redis_server import shared_client

    shared_client(settings.REDIS_URL).set(f"deepseek:watched:{conversation.id}", "1", ex=600)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


@override_settings(DEEPSEEK_MODELS=long_answers())
class ScaleOutTest(ChannelsLiveServerTestCase):
    ProtocolServerProcess = FreshConnectionsDaphne

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # A second web process: same code, same Redis, same database, its own port.
        cls.second = FreshConnectionsDaphne(cls.host, partial(make_application, static_wrapper=None),
                                            setup=set_database_connection)
        cls.second.start()
        assert cls.second.ready.wait(30), "the second daphne did not start"
        cls.workers = {name: WorkerProcess(name) for name in ("w1", "w2")}
        for worker in cls.workers.values():
            worker.wait_live()

    @classmethod
    def tearDownClass(cls):
        for worker in cls.workers.values():
            worker.stop()
        cls.second.terminate()
        cls.second.join()
        super().tearDownClass()

    def setUp(self):
        self.user = get_user_model().objects.create_user("scale", password="a long pass phrase 9")

    def socket(self, port: int, conversation: Conversation):
        client = Client()
        client.force_login(self.user)
        return connect(f"ws://{self.host}:{port}/ws/chat/{conversation.id}/", open_timeout=10,
                       origin=f"http://{self.host}:{port}",
                       additional_headers={"Cookie": f"sessionid={client.cookies['sessionid'].value}"})

    def ask(self, conversation: Conversation, text: str) -> Message:
        """Send through the actions (as the socket does) and wait for the answer to end."""
        sent = actions.do_send_message(self.user, conversation.id, text)
        answer = sent.assistant_message
        return wait_for(lambda: Message.objects.filter(id=answer.id).exclude(status__in=Message.ACTIVE).first(),
                        120, "the answer")

    def test_a_message_sent_through_one_web_process_streams_to_a_socket_on_the_other(self):
        conversation = Conversation.objects.create(user=self.user, model="deepseek-chat", max_tokens=60)
        with self.socket(self._port, conversation) as sender, \
                self.socket(self.second.port.value, conversation) as watcher:
            sender.send(json.dumps({"type": "send", "content": "Hello from one tab", "client_id": "a",
                                    "attachments": []}))
            frames = []
            while not frames or frames[-1].get("type") != "done":
                frames.append(json.loads(watcher.recv(timeout=120)))
        answer = Message.objects.get(role="assistant", conversation=conversation)
        deltas = [f for f in frames if f["type"] == "delta" and f["message_id"] == str(answer.id)]
        assert [f["seq"] for f in deltas] == list(range(1, len(deltas) + 1)), "gaps or repeats across processes"
        assert "".join(f["content"] for f in deltas) == answer.content != ""
        assert frames[-1]["finish_reason"] == answer.finish_reason

    def test_each_conversation_sticks_to_its_worker_and_both_workers_share_the_load(self):
        first = [conversation_for(self.user, w.hostname) for w in self.workers.values()]
        for conversation in first:
            for turn in ("A first question", "and a follow-up"):
                answer = self.ask(conversation, turn)
                assert answer.status == "done"
        served = {}
        for conversation in first:
            calls = AuditEvent.objects.filter(action="model_call", conversation_id=conversation.id)
            # The worker writes the audit event just after the row it marks done: give it a moment.
            wait_for(lambda calls=calls: calls.count() >= 2, 10, "both answers' audit events")
            served[conversation.id] = {call.detail["worker"] for call in calls}
            assert calls.count() == 2
        assert [served[c.id] for c in first] == [{w.hostname} for w in self.workers.values()]

    def test_a_worker_killed_mid_answer_leaves_it_failed_with_its_text_and_the_other_carries_on(self):
        w1, w2 = self.workers["w1"], self.workers["w2"]
        conversation = conversation_for(self.user, w1.hostname, max_tokens=None)
        sent = actions.do_send_message(self.user, conversation.id, "Write a very long answer")
        answer_id = sent.assistant_message.id
        wait_for(lambda: Message.objects.filter(id=answer_id, seq__gte=3).exists(), 60, "the answer to stream")
        w1.kill()
        killed_at = Message.objects.get(id=answer_id)
        # The survivor's sweep fails it once its writing key has expired (≤ 20 s + a 10 s sweep period).
        failed = wait_for(lambda: Message.objects.filter(id=answer_id, status="failed").first(), 60,
                          "the orphaned answer to be failed")
        assert failed.error == ORPHAN_ERROR
        assert failed.content == killed_at.content != "", "text was lost or written twice"
        assert failed.seq == killed_at.seq
        # The same conversation goes on with the surviving worker, once w1's heartbeat has lapsed.
        wait_for(lambda: w1.hostname not in live_workers(QUEUE), 30, "w1 to be seen gone")
        Conversation.objects.filter(id=conversation.id).update(max_tokens=40)  # a short one this time
        again = actions.do_regenerate(self.user, conversation.id, answer_id).assistant_message
        done = wait_for(lambda: Message.objects.filter(id=again.id, status="done").first(), 120, "the regeneration")
        assert AuditEvent.objects.get(action="model_call", message_id=done.id).detail["worker"] == w2.hostname
        # And a restarted w1 takes its share again.
        self.workers["w1"] = WorkerProcess("w1")
        self.workers["w1"].wait_live()
        back = conversation_for(self.user, self.workers["w1"].hostname)
        assert self.ask(back, "Are you back?").status == "done"
