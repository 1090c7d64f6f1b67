"""Container health checks: `probe.py web [PATH]`, `probe.py worker`, `probe.py broker` (exit 0 = healthy).

Python rather than curl: the images carry no curl, and a check must speak to the app the way nginx does
(an allowed Host, X-Forwarded-Proto) or production settings answer 400 or redirect to https.
"""
from __future__ import annotations

import http.client
import os
import socket
import sys


def check_web(path: str) -> bool:
    """GET the path on the local daphne without following redirects: only a 200 counts."""
    hosts = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()]
    host = (hosts[0].lstrip(".") if hosts and hosts[0] != "*" else "") or "localhost"
    connection = http.client.HTTPConnection("127.0.0.1", int(os.environ.get("PORT", "8000")), timeout=5)
    try:
        # The proxy's headers: behind nginx the site only ever sees https requests.
        connection.request("GET", path, headers={"Host": host, "X-Forwarded-Proto": "https"})
        status = connection.getresponse().status
    except OSError as exc:
        print(f"web: {exc}")
        return False
    finally:
        connection.close()
    print(f"web: GET {path} -> {status}")
    return status == 200


def check_worker() -> bool:
    """Celery's remote-control ping to this container's own worker (named WORKER_MODEL@hostname)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")
    from deepseek_web.celery import app

    node = f"{os.environ['WORKER_MODEL']}@{socket.gethostname()}"
    replies = app.control.ping(destination=[node], timeout=10)
    print(f"worker: ping {node} -> {replies}")
    return any(node in reply for reply in replies)


def check_broker() -> bool:
    """Beat has no ping of its own: check the broker it publishes to answers."""
    import redis

    try:
        return bool(redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5).ping())
    except redis.RedisError as exc:
        print(f"broker: {exc}")
        return False


def main(argv: list[str]) -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the app's root
    kind = argv[1] if len(argv) > 1 else "web"
    if kind == "web":
        healthy = check_web(argv[2] if len(argv) > 2 else "/healthz")
    elif kind == "worker":
        healthy = check_worker()
    elif kind == "broker":
        healthy = check_broker()
    else:
        print(f"usage: {argv[0]} web [PATH] | worker | broker")
        return 2
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
