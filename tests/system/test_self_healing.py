"""Workers that heal: a real `celery worker` (and `make run`'s stack) against a private Redis the tests stop
and start.

- A worker whose Redis stays away longer than WORKER_BROKER_GRACE_SECONDS exits non-zero (its watchdog,
  chat/worker/watchdog.py), so a supervisor can start a new one; one whose Redis blips for less keeps
  consuming; one kept busy on every thread is not taken for dead.
- `make run`'s supervisor (deepseek_web/stack.py) prints its URL once /readyz is green, restarts a killed
  worker and one that exited while Redis was away, saying so, and the restarted worker answers.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model

from chat.accounts import api_keys
from chat.audit.models import AuditEvent
from chat.conversations.lifecycle import ORPHAN_ERROR
from chat.conversations.models import Message
from chat.core.redis_server import PrivateRedis, free_port, shared_client
from chat.core.worker_routing import live_workers
from chat.devtools.resilience.stack import database_url, wait_for_port
from chat.worker.watchdog import EXIT_CODE
from tests.support import waiting

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
QUEUE = "model.deepseek-chat"
DEADLINE = 120  # generous: the tests wait for states, this only stops a broken one
LONG_TOKENS = 400


def demo_model() -> dict:
    """The demo chat model, greedy (no early end), allowed long answers (the busy test)."""
    return {"name": "deepseek-chat", "path": str(settings.DEMO_MODELS_DIR / "demo-chat"), "max_context": 2048,
            "max_new_tokens": LONG_TOKENS, "temperature": 0, "demo": True}


def wait_for(predicate, what, timeout: float = DEADLINE):
    return waiting.wait_for(predicate, what, timeout)


class Process:
    """A child in a session of its own, its output in a file the test reads."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, env=env, cwd=settings.BASE_DIR, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # and whatever it left behind
        except ProcessLookupError:
            pass
        self.process.wait(10)


class Site:
    """A private Redis the test stops and starts, and the worker and web processes pointed at it."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.redis = PrivateRedis(free_port()).start()
        self.processes: list[Process] = []
        self.web_port: int | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "DJANGO_SETTINGS_MODULE": "deepseek_web.settings", "DATABASE_URL": database_url(),
                "REDIS_URL": self.redis.url, "DATA_DIR": str(settings.DATA_DIR),
                "DEEPSEEK_MODELS": json.dumps([demo_model()]), "LOG_LEVEL": "WARNING", **extra}

    def stop_redis(self) -> None:
        self.redis.stop()

    def start_redis(self) -> None:
        self.redis = PrivateRedis(self.redis.port).start()  # empty, as a Redis restarted without its data

    def worker(self, name: str, broker_grace: float, consumer_grace: float, threads: int = 2) -> Process:
        process = Process(name, [sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-P", "threads",
                                 "-Q", QUEUE, "-n", f"{name}@healing", "--loglevel", "WARNING",
                                 "--without-mingle", "--without-gossip"],
                          self.env(WORKER_BROKER_GRACE_SECONDS=str(broker_grace),
                                   WORKER_CONSUMER_GRACE_SECONDS=str(consumer_grace),
                                   WORKER_CONCURRENCY=str(threads)), self.logs)
        process.hostname = f"{name}@healing"
        self.processes.append(process)
        return process

    def web(self) -> None:
        self.web_port = free_port()
        web = Process("web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.web_port),
                              "deepseek_web.asgi:application"], self.env(), self.logs)
        self.processes.append(web)
        wait_for_port(self.web_port, web.process)

    def live(self) -> list[str]:
        try:
            return live_workers(QUEUE, shared_client(self.redis.url))
        except redis.RedisError:
            return []

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.redis.stop()


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path)
    yield site
    site.close()


@pytest.fixture
def user():
    return get_user_model().objects.create_user("healing", password="a long pass phrase 9")


@pytest.fixture
def api_key(user):
    return api_keys.do_create_key(user, "tests")[1]


def ask(port: int, key: str, max_tokens: int = 8) -> dict:
    """One /v1 completion (it waits for a worker if none is live yet); its JSON body."""
    response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=DEADLINE,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"model": "deepseek-chat", "max_tokens": max_tokens,
                                "messages": [{"role": "user", "content": "Hello"}]})
    assert response.status_code == 200, response.text
    return response.json()


def assert_answered(completion: dict) -> None:
    row = Message.objects.get(id=completion["id"].removeprefix("chatcmpl-"))
    assert row.status == Message.Status.DONE
    assert completion["choices"][0]["message"]["content"] == row.content != ""


# ---- the worker's watchdog --------------------------------------------------------------------------
def test_a_worker_whose_redis_stays_away_longer_than_the_grace_exits_non_zero(site):
    worker = site.worker("w1", broker_grace=3, consumer_grace=30)
    wait_for(lambda: worker.hostname in site.live(), "the worker to announce itself")
    site.stop_redis()
    wait_for(lambda: worker.process.poll() is not None, lambda: f"the worker to exit; its log:\n{worker.log()}")
    assert worker.process.returncode == EXIT_CODE
    log = worker.log()
    # It noticed, waited out the grace, then said why it left, in one line.
    assert f"Redis (the broker) is unreachable; worker {worker.hostname} exits if it stays so for 3 s" in log
    assert re.search(rf"worker {worker.hostname} can no longer take tasks: Redis \(the broker\) has been "
                     r"unreachable for \d+ s \(WORKER_BROKER_GRACE_SECONDS=3\); exiting", log), log


def test_a_worker_rides_out_a_redis_outage_shorter_than_the_grace_and_answers_after_it(site, api_key):
    worker = site.worker("w1", broker_grace=60, consumer_grace=60)
    site.web()
    wait_for(lambda: worker.hostname in site.live(), "the worker to announce itself")
    site.stop_redis()
    wait_for(lambda: "Redis (the broker) is unreachable" in worker.log(), "the worker to notice Redis is gone")
    site.start_redis()
    wait_for(lambda: f"worker {worker.hostname} takes tasks again" in worker.log(),
             lambda: f"the worker's consumer to answer again; its log:\n{worker.log()}")
    assert worker.process.poll() is None
    assert_answered(ask(site.web_port, api_key))  # queued after Redis came back, written by the same worker
    assert worker.process.poll() is None and "can no longer take tasks" not in worker.log()


def test_a_worker_whose_redis_restarts_mid_answer_takes_tasks_again_or_exits_and_nothing_is_written_twice(
        site, user, api_key):
    """The outage that left Celery's consumer dead in the resilience suite (see chat/worker/watchdog.py): the
    worker either reconnects, or (Celery stopping by itself) exits non-zero, never both alive and idle."""
    worker = site.worker("w1", broker_grace=30, consumer_grace=5)
    site.web()
    wait_for(lambda: worker.hostname in site.live(), "the worker to announce itself")
    asking = threading.Thread(target=lambda: httpx.post(
        f"http://127.0.0.1:{site.web_port}/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
        json={"model": "deepseek-chat", "max_tokens": LONG_TOKENS, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=DEADLINE), daemon=True)
    asking.start()
    answer = wait_for(lambda: Message.objects.filter(conversation__user=user, role="assistant", status="streaming",
                                                     seq__gte=3).first(), "the answer to stream")
    site.stop_redis()
    wait_for(lambda: "Connection to broker lost" in worker.log(), "the worker's consumer to notice Redis is gone")
    site.start_redis()
    wait_for(lambda: worker.process.poll() is not None or f"worker {worker.hostname} takes tasks again" in worker.log(),
             lambda: f"the worker to take tasks again or to exit; its log:\n{worker.log()[-5000:]}")
    if worker.process.poll() is not None:
        assert worker.process.returncode != 0  # Celery's own exit after its error (1), or the watchdog's (75)
        worker = site.worker("w1", broker_grace=30, consumer_grace=5)  # as its supervisor would
    ended = wait_for(lambda: Message.objects.filter(id=answer.id).exclude(status__in=Message.ACTIVE).first(),
                     "the answer in flight to end")
    assert ended.status == "done" or (ended.status == "failed" and ended.error == ORPHAN_ERROR), ended.status
    assert ended.content.startswith(answer.content)
    assert_answered(ask(site.web_port, api_key))  # the worker (or its successor) takes tasks
    asking.join(DEADLINE)
    # Not written twice: one model call at most for the answer in flight, and it is not taken up again.
    assert AuditEvent.objects.filter(action="model_call", message_id=answer.id).count() <= 1
    assert Message.objects.get(id=answer.id).content == ended.content
    assert worker.process.poll() is None


def test_a_worker_busy_on_every_thread_for_longer_than_the_grace_is_not_taken_for_dead(site, api_key):
    grace = 4
    worker = site.worker("w1", broker_grace=30, consumer_grace=grace, threads=2)
    site.web()
    wait_for(lambda: worker.hostname in site.live(), "the worker to announce itself")
    busy_until = time.monotonic() + 3 * grace
    answered: list[dict] = []

    def keep_busy() -> None:  # one long answer after another on each of its threads
        while time.monotonic() < busy_until and worker.process.poll() is None:
            answered.append(ask(site.web_port, api_key, max_tokens=LONG_TOKENS))

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(keep_busy) for _ in range(2)]:
            future.result()
    assert worker.process.poll() is None, worker.log()
    assert "can no longer take tasks" not in worker.log()
    for completion in answered:
        assert_answered(completion)


# ---- make run's supervisor --------------------------------------------------------------------------
class StackOutput:
    """`python -m deepseek_web.stack`'s output, read line by line on a thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.text()))


def worker_pid(stack: subprocess.Popen) -> int | None:
    """The stack's `celery worker` child (the one running now), from /proc."""
    for task in Path(f"/proc/{stack.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"celery" in command and b"worker" in command:
                return int(child)
    return None


def test_make_run_says_when_it_is_ready_and_restarts_a_worker_that_was_killed_or_exited(site, api_key):
    port = free_port()
    stack = subprocess.Popen([sys.executable, "-m", "deepseek_web.stack"], cwd=settings.BASE_DIR, text=True,
                             env=site.env(HOST="127.0.0.1", PORT=str(port), WORKER_BROKER_GRACE_SECONDS="3",
                                          WORKER_CONCURRENCY="2", LOG_LEVEL="INFO"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out = StackOutput(stack)
    ready_line = f"deepseek-web is running at http://127.0.0.1:{port}/"
    worker_ready = r"worker-\d+@\S+ ready\."
    try:
        wait_for(lambda: ready_line in out.text(), lambda: f"the stack to say it is ready:\n{out.text()[-3000:]}")
        before = out.text().split(ready_line)[0]
        assert "starting (" in before and "waiting for" in before  # progress until then
        assert site.live(), "the URL was printed before a worker was live"

        # Killed (as the kernel's OOM killer would): restarted after the first delay.
        first = worker_pid(stack)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: "the Celery worker was killed by SIGKILL; restarting it in 1 s (restart 1)" in out.text(),
                 lambda: f"the restart line:\n{out.text()[-3000:]}")
        wait_for(lambda: out.count(worker_ready) >= 2, "the restarted worker to be ready")

        # Redis away past the grace: the worker exits, the supervisor starts another (after a longer delay:
        # the last one did not stay up long), which takes tasks once Redis is back.
        site.stop_redis()
        wait_for(lambda: re.search(r"the Celery worker exited with code 75; restarting it in 2 s \(restart 2\)",
                                   out.text()), lambda: f"the worker to exit:\n{out.text()[-3000:]}")
        site.start_redis()
        wait_for(lambda: out.count(worker_ready) >= 3, lambda: f"the worker to be back:\n{out.text()[-3000:]}")
        assert_answered(ask(port, api_key))
        assert stack.poll() is None
    finally:
        last = worker_pid(stack)
        stack.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            stack.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait(10)
        for group in (stack.pid, last):  # nothing left behind, whatever happened (the worker has its own)
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, TypeError):
                pass
    assert stack.returncode == 0, out.text()[-3000:]
