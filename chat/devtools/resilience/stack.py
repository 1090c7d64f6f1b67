"""The whole site on loopback for the resilience suite: a private Redis (so it can be restarted),
daphne processes and Celery worker processes, sharing this process's database."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from chat.core.redis_server import PrivateRedis, free_port, shared_client
from chat.core.worker_routing import live_workers

QUEUE_PREFIX = "model."


def database_url() -> str:
    """This process's database (the test one under pytest) as a DATABASE_URL for the children."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith(("sqlite3", ".sqlite")):  # Django's, or ours (deepseek_web/sqlite)
        return f"sqlite:///{os.path.abspath(db['NAME'])}"
    user = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


class LoopbackStack:
    """Starts and stops the parts; every address is 127.0.0.1 and every wait is bounded."""

    def __init__(self, model: dict[str, Any], webs: int = 1, workers: int = 1, worker_threads: int | None = None,
                 env: dict[str, str] | None = None, ping: tuple[int, int] = (20, 30),
                 more_models: list[dict[str, Any]] | None = None) -> None:
        self.model = model  # the one the scenarios chat with; every worker serves `more_models` too
        self.more_models = more_models or []
        self.queue = QUEUE_PREFIX + model["name"]
        self.redis = PrivateRedis(free_port())
        self.web_ports = [free_port() for _ in range(webs)]
        self.webs: dict[int, subprocess.Popen] = {}
        self.workers: dict[str, subprocess.Popen] = {}
        self.worker_threads = worker_threads
        self.worker_count = workers
        self.extra_env = env or {}
        # daphne pings every socket and closes one that has not answered in time: how a client that
        # stopped reading is noticed (and its answer then cancelled as unwatched).
        self.ping_interval, self.ping_timeout = ping
        self.logs = Path(settings.DATA_DIR) / "resilience-logs"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DJANGO_SETTINGS_MODULE": "deepseek_web.settings", "DATABASE_URL": database_url(),
                "REDIS_URL": self.redis.url, "DATA_DIR": str(settings.DATA_DIR),
                "DEEPSEEK_MODELS": json.dumps([self.model, *self.more_models]), "LOG_LEVEL": "WARNING",
                **self.extra_env}

    def _log(self, name: str):
        self.logs.mkdir(parents=True, exist_ok=True)
        return open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)

    # ---- parts --------------------------------------------------------------------------------
    def start(self) -> LoopbackStack:
        self.redis.start()
        for index in range(self.worker_count):
            self.start_worker(f"w{index + 1}")
        for port in self.web_ports:
            self.start_web(port)
        for name in self.workers:
            self.wait_worker(name)
        return self

    def start_web(self, port: int) -> None:
        self.webs[port] = subprocess.Popen(
            # The run command's server (deepseek_web/daphne_server.py: daphne with the body cap).
            [sys.executable, "-m", "deepseek_web.daphne_server", "-b", "127.0.0.1", "-p", str(port), "--ping-interval",
             str(self.ping_interval), "--ping-timeout", str(self.ping_timeout), "deepseek_web.asgi:application"],
            env=self.env, cwd=settings.BASE_DIR, stdout=self._log(f"web-{port}"), stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_for_port(port, self.webs[port])

    def start_worker(self, name: str) -> None:
        self.workers[name] = subprocess.Popen(
            # The pool's size: the settings' (sized by the engine's capacity) unless the stack was given one.
            [sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-P", "threads",
             *(["-c", str(self.worker_threads)] if self.worker_threads else []),
             "-Q", ",".join([self.queue, *(QUEUE_PREFIX + m["name"] for m in self.more_models)]),
             "-n", f"{name}@resilience", "--loglevel", "WARNING",
             "--without-mingle", "--without-gossip"],
            env=self.env, cwd=settings.BASE_DIR, stdout=self._log(f"worker-{name}"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_worker(self, name: str, timeout: float = 120) -> None:

        deadline = time.monotonic() + timeout
        while f"{name}@resilience" not in live_workers(self.queue, shared_client(self.redis.url)):
            if self.workers[name].poll() is not None:
                raise RuntimeError(f"worker {name} exited with {self.workers[name].returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not announce itself in {timeout} s")
            time.sleep(0.2)

    def kill_worker(self, name: str) -> None:
        """SIGKILL: no shutdown handler runs, as when the kernel's OOM killer or a lost host ends it."""
        process = self.workers.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def pause_worker(self, name: str) -> None:
        """SIGSTOP: the worker keeps its tasks, connections and answers but does nothing until resumed."""
        os.killpg(self.workers[name].pid, signal.SIGSTOP)

    def resume_worker(self, name: str) -> None:
        os.killpg(self.workers[name].pid, signal.SIGCONT)

    def restart_web(self, port: int, down_seconds: float = 1.0) -> None:
        process = self.webs.pop(port)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        time.sleep(down_seconds)
        self.start_web(port)

    def restart_redis(self, down_seconds: float = 2.0) -> None:
        port = self.redis.port
        self.redis.stop()
        time.sleep(down_seconds)
        self.redis = PrivateRedis(port).start()

    def gone(self) -> list[str]:
        """The web and worker processes that have exited (killed, crashed)."""
        return ([f"web :{port}" for port, p in self.webs.items() if p.poll() is not None]
                + [f"worker {name}" for name, p in self.workers.items() if p.poll() is not None])

    def revive(self) -> None:
        """Start again every web and worker process that has exited, as a supervisor would."""
        for port in [port for port, p in self.webs.items() if p.poll() is not None]:
            del self.webs[port]
            self.start_web(port)
        for name in [name for name, p in self.workers.items() if p.poll() is not None]:
            del self.workers[name]
            self.start_worker(name)
            self.wait_worker(name)

    def stop(self) -> None:
        processes = list(self.webs.values()) + list(self.workers.values())
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGCONT)  # a paused worker could not act on the SIGTERM
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.webs.clear()
        self.workers.clear()
        self.redis.stop()
