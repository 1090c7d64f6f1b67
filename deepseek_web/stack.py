"""The run command's body: migrate, build the demo model, then Redis + a Celery worker + daphne.

`python -m deepseek_web.stack` (what `make run` calls). Ctrl-C stops everything it started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from chat.core.redis_server import ensure_redis, free_port

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")


def _wait_for_port(host: str, port: int, process: subprocess.Popen, timeout: float = 60.0) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


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
        print(f"started a private Redis on 127.0.0.1:{redis.port} (REDIS_URL was not reachable)", flush=True)
    env = dict(os.environ)
    # The model queues, plus the default queue for periodic jobs (audit retention) from the embedded beat.
    queues = ",".join(sorted({spec.celery_queue for spec in models} | {settings.CELERY_TASK_DEFAULT_QUEUE}))
    concurrency = os.environ.get("WORKER_CONCURRENCY", "8")
    processes: list[subprocess.Popen] = []
    stopping = False

    def request_stop(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-P", "threads", "-c", concurrency,
             "-Q", queues, "-n", f"worker-{free_port()}@%h", "--loglevel", "INFO", "-B",
             "-s", settings.CELERY_BEAT_SCHEDULE_FILENAME], env=env,
        ))
        daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "deepseek_web.asgi:application"], env=env
        )
        processes.append(daphne)
        if _wait_for_port(host, port, daphne):
            print(f"\n  deepseek-web is running at http://{host}:{port}/   (Ctrl-C to stop)\n", flush=True)
        while not stopping and all(p.poll() is None for p in processes):
            time.sleep(0.3)
        crashed = [p for p in processes if p.poll() not in (None, 0)]
        return 1 if crashed and not stopping else 0
    finally:
        print("stopping…", flush=True)
        _stop(processes)
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
