"""Helpers to open the chat socket as a given user through the real ASGI stack."""
from __future__ import annotations

import json
from typing import Any

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from deepseek_web.asgi import application


def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def open_socket(user, conversation_id, origin: str = "http://127.0.0.1:8000",
                      language: str | None = None) -> WebsocketCommunicator:
    headers = [(b"origin", origin.encode()), (b"host", b"127.0.0.1:8000")]
    cookies = [f"django_language={language}"] if language else []
    if user is not None:
        cookies.append(f"sessionid={await sync_to_async(_session_cookie)(user)}")
    if cookies:
        headers.append((b"cookie", "; ".join(cookies).encode()))
    socket = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers=headers)
    connected, _ = await socket.connect(timeout=5)
    assert connected, "the handshake was refused"
    return socket


async def send(socket: WebsocketCommunicator, frame: Any) -> None:
    await socket.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))


async def receive(socket: WebsocketCommunicator, timeout: float = 10) -> dict[str, Any]:
    return await socket.receive_json_from(timeout=timeout)


async def receive_until(socket: WebsocketCommunicator, frame_type: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Every frame up to and including the first of `frame_type`."""
    frames = []
    while True:
        frame = await receive(socket, timeout)
        frames.append(frame)
        if frame["type"] == frame_type:
            return frames
