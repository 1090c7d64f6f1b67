"""The run command's body: migrate, build the demo model, then Redis + a Celery worker + daphne.

`python -m deepseek_web.stack` (what `make run` calls). It prints the site's URL once `/readyz` is green
(the database, Redis, and a live worker for every model), with progress until then. A worker that exits
(its watchdog ends it when it can no longer take tasks: chat/worker/watchdog.py) is started again, after
1 s, then 2, 4, … up to 30 s while it keeps exiting; one that stayed up a minute starts from 1 s again.
daphne exiting ends the run. Ctrl-C stops everything it started.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from chat.core.redis_server import ensure_redis, free_port

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")

RESTART_FIRST_DELAY = 1.0
RESTART_MAX_DELAY = 30.0
STABLE_SECONDS = 60.0  # a worker up this long restarts after RESTART_FIRST_DELAY again
READY_POLL_SECONDS = 1.0
PROGRESS_EVERY_SECONDS = 15.0


def web_server_command(host: str, port: int) -> list[str]:
    """daphne with the server's own body cap (deepseek_web/daphne_server.py): without a proxy in front, nothing
    else stops a 4 GB POST before daphne has buffered it."""
    return [sys.executable, "-m", "deepseek_web.daphne_server", "-b", host, "-p", str(port),
            "deepseek_web.asgi:application"]


def _say(line: str) -> None:
    print(line, flush=True)


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervised:
    """A child process started again, with exponential backoff, each time it exits while the stack runs.

    `launch` starts it in a session of its own (start_new_session=True), so what it leaves behind when it
    dies (the worker's embedded beat process) is ended with it, before the next one starts."""

    def __init__(self, name: str, launch: Callable[[], subprocess.Popen], say: Callable[[str], None] = _say,
                 first_delay: float = RESTART_FIRST_DELAY, max_delay: float = RESTART_MAX_DELAY,
                 stable_seconds: float = STABLE_SECONDS) -> None:
        self.name, self.launch, self.say = name, launch, say
        self.first_delay, self.max_delay, self.stable_seconds = first_delay, max_delay, stable_seconds
        self.delay = first_delay
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.restarts = 0

    def start(self) -> Supervised:
        self.process = self.launch()
        self.started_at = time.monotonic()
        self.restart_at = None
        return self

    def tend(self, now: float | None = None) -> None:
        """Notice an exit (one line saying so and when it restarts), and restart when its delay is over."""
        now = time.monotonic() if now is None else now
        if self.process is not None and self.process.poll() is not None:
            if now - self.started_at >= self.stable_seconds:
                self.delay = self.first_delay
            self.restarts += 1
            self.say(f"the {self.name} {_exit_status(self.process.returncode)}; restarting it in {self.delay:g} s "
                     f"(restart {self.restarts})")
            self.reap()
            self.process = None
            self.restart_at = now + self.delay
            self.delay = min(self.delay * 2, self.max_delay)
        if self.process is None and self.restart_at is not None and now >= self.restart_at:
            self.start()

    def reap(self) -> None:
        """End whatever is left of the process's session."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:  # none left (ProcessLookupError), or not ours
                pass


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def _host_header(host: str, port: int) -> str:
    """A Host that ALLOWED_HOSTS accepts, so the probe is not refused as a stranger."""
    from django.conf import settings

    for allowed in settings.ALLOWED_HOSTS:
        if allowed and allowed != "*":
            return f"{allowed.lstrip('.')}:{port}"
    return f"{_probe_host(host)}:{port}"


def readiness(host: str, port: int, timeout: float = 3.0) -> tuple[bool, list[str]]:
    """(ready, what is still missing) from /readyz; missing is ["the web server"] while it does not answer."""
    request = urllib.request.Request(f"http://{_probe_host(host)}:{port}/readyz",
                                     headers={"Host": _host_header(host, port)})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True, []
    except urllib.error.HTTPError as exc:
        try:
            checks = json.loads(exc.read()).get("checks", {})
        except (ValueError, AttributeError):
            return False, [f"the web server (HTTP {exc.code})"]
        return False, _missing(checks)
    except OSError:
        return False, ["the web server"]


def _missing(checks: dict[str, dict]) -> list[str]:
    missing, models = [], []
    for name, check in checks.items():
        if check.get("ok"):
            continue
        if name.startswith("workers:"):
            models.append(name.removeprefix("workers:"))
        else:
            missing.append({"redis": "Redis", "database": "the database"}.get(name, name))
    if models:
        missing.append(f"a live worker for {', '.join(models)}")
    return missing


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> int:
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    from chat.core.served_models import all_models

    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    call_command("migrate", interactive=False, verbosity=1)
    models = all_models().values()
    if any(spec.demo for spec in models):
        call_command("build_demo_models", if_missing=True)

    redis = ensure_redis(settings.REDIS_URL)
    if redis is not None:
        _say(f"started a private Redis on 127.0.0.1:{redis.port} (REDIS_URL was not reachable)")
    env = dict(os.environ)
    # The model queues, plus the default queue for periodic jobs (audit retention) from the embedded beat.
    queues = ",".join(sorted({spec.celery_queue for spec in models} | {settings.CELERY_TASK_DEFAULT_QUEUE}))
    # One name for the run: a restarted worker takes up its predecessor's private queue. Concurrency comes
    # from settings (CELERY_WORKER_CONCURRENCY).
    worker_command = [sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-P", "threads",
                      "-Q", queues, "-n", f"worker-{free_port()}@%h", "--loglevel", "INFO", "-B",
                      "-s", settings.CELERY_BEAT_SCHEDULE_FILENAME]
    worker = Supervised("Celery worker",
                        lambda: subprocess.Popen(worker_command, env=env, start_new_session=True))
    daphne: subprocess.Popen | None = None
    stopping = False

    def request_stop(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        worker.start()
        daphne = subprocess.Popen(web_server_command(host, port), env=env)
        started = time.monotonic()
        ready, shown, shown_at, next_poll = False, None, 0.0, 0.0
        while not stopping and daphne.poll() is None:
            worker.tend()
            now = time.monotonic()
            if not ready and now >= next_poll:
                next_poll = now + READY_POLL_SECONDS
                ready, missing = readiness(host, port)
                if ready:
                    _say(f"\n  deepseek-web is running at http://{host}:{port}/   (Ctrl-C to stop)\n")
                elif missing != shown or now - shown_at >= PROGRESS_EVERY_SECONDS:
                    shown, shown_at = missing, now
                    _say(f"starting ({now - started:.0f} s): waiting for {'; '.join(missing)}…")
            time.sleep(0.3)
        if stopping:
            return 0
        _say(f"the web server (daphne) {_exit_status(daphne.returncode)}; stopping")
        return 1
    finally:
        _say("stopping…")
        _stop([p for p in (daphne, worker.process) if p is not None])
        worker.reap()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
