"""The run command's web server (deepseek_web/daphne_server.py, started as deepseek_web/stack.py starts it) refuses
an oversized body itself: with no proxy in front, a 4 GB POST to /healthz is answered 413 from its headers alone,
and a chunked body is cut off once it passes SERVER_MAX_BODY_BYTES, before daphne buffers it."""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

from chat.core.redis_server import free_port
from chat.devtools.resilience.stack import wait_for_port
from deepseek_web.stack import web_server_command

LIMIT = 100_000  # the smallest the settings allow with 1 KB API bodies and 1 KB images is 66,560
CHUNK = 16 * 1024


@pytest.fixture(scope="module")
def server():
    port = free_port()
    env = {**os.environ, "SERVER_MAX_BODY_BYTES": str(LIMIT), "API_MAX_BODY_BYTES": "1024",
           "ATTACHMENT_MAX_BYTES": "1024"}
    process = subprocess.Popen(web_server_command("127.0.0.1", port), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def _connect(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    return connection


def _read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_a_4_gb_declared_body_gets_413_from_its_headers_alone(server):
    with _connect(server) as connection:
        connection.sendall(b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n"
                           b"Content-Length: 4294967296\r\n\r\n")  # and not one byte of the body
        answer = _read_all(connection)  # the server answers, then closes: it waits for none of the body
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"100 Continue" not in answer


def test_an_expect_100_continue_client_is_told_413_not_to_go_on(server):
    with _connect(server) as connection:
        connection.sendall(b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4294967296\r\n"
                           b"Expect: 100-continue\r\n\r\n")
        answer = _read_all(connection)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer, answer[:200]


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(server):
    sent = 0
    answer = b""
    with _connect(server) as connection:
        connection.sendall(b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % CHUNK + b"x" * CHUNK + b"\r\n"
        try:
            while sent < 500 * LIMIT:  # far past the limit, unless the server stops it
                connection.sendall(chunk)
                sent += CHUNK
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = _read_all(connection)
        except ConnectionResetError:  # the refusal was read, or reset away with what we kept sending
            pass
    assert sent < 500 * LIMIT, "the server read the whole oversized chunked body"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_a_body_within_the_limit_still_reaches_the_application(server):
    with _connect(server) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = _read_all(connection)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    with _connect(server) as connection:
        body = b"x" * (LIMIT // 2)
        connection.sendall(b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(body) + body)
        answer = _read_all(connection)
    assert not answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
