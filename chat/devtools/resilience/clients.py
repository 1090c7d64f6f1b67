"""Clients the resilience suite drives the site with: a chat socket that reconnects and resumes as
the page does (static/chat/chat.js), and a streamed /v1 request. Each records what it saw."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets


@dataclass
class Answer:
    """One answer as a client saw it: timings, the streamed text, and the row's final text."""

    sent_at: float
    first_at: float | None = None
    done_at: float | None = None
    text: str = ""
    final_text: str | None = None  # the finished row's content (the worker's last message frame)
    tokens: int = 0
    finish_reason: str = ""
    seqs: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0
    resumed: bool = False  # text was repaired from the row after frames were missed
    completion_id: str = ""  # API answers: chatcmpl-<message id hex>

    @property
    def ttft(self) -> float | None:
        return None if self.first_at is None else self.first_at - self.sent_at

    @property
    def inter_token(self) -> float | None:
        if self.first_at is None or self.done_at is None or self.tokens < 2:
            return None
        return (self.done_at - self.first_at) / (self.tokens - 1)

    @property
    def time_per_token(self) -> float | None:
        """From the send to the end, per token: unlike `inter_token`, a burst of late-delivered frames
        (the first delta arriving just before `done`) cannot make it look fast."""
        if self.done_at is None or not self.tokens:
            return None
        return (self.done_at - self.sent_at) / self.tokens

    @property
    def seq_ok(self) -> bool:
        """Live deltas arrived in order with no repeats (a resume may skip ahead, never back)."""
        return all(b > a for a, b in zip(self.seqs, self.seqs[1:], strict=False))


class SocketChat:
    """One tab: a socket on one conversation, reconnecting (to the next web port) when it drops."""

    def __init__(self, ports: list[int], cookie: str, conversation_id: Any, timeout: float = 120) -> None:
        self.ports, self.cookie, self.conversation_id, self.timeout = ports, cookie, conversation_id, timeout
        self._port_index = 0
        self.ws: Any = None

    async def _connect(self) -> None:
        deadline = time.monotonic() + self.timeout
        delay = 0.2
        while True:
            port = self.ports[self._port_index % len(self.ports)]
            try:
                self.ws = await websockets.connect(
                    f"ws://127.0.0.1:{port}/ws/chat/{self.conversation_id}/", max_size=None, open_timeout=5,
                    additional_headers={"Cookie": self.cookie, "Origin": f"http://127.0.0.1:{port}"})
                return
            except (TimeoutError, OSError, websockets.WebSocketException):
                self._port_index += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def ask(self, text: str) -> Answer:
        return await self._run({"type": "send", "content": text, "client_id": "resilience"})

    async def regenerate(self, message_id: Any) -> Answer:
        return await self._run({"type": "regenerate", "message_id": str(message_id)})

    async def _run(self, command: dict[str, Any]) -> Answer:
        """Send a command that starts an answer, and follow that answer to its end."""
        if self.ws is None:
            await self._connect()
        answer = Answer(sent_at=time.perf_counter())
        await self.ws.send(json.dumps(command))
        message_id = None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                frame = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.1, deadline - time.monotonic())))
            except (websockets.ConnectionClosed, OSError):
                answer.reconnects += 1
                await self._connect()
                if message_id is None:  # the send may or may not have been taken: it is in the row if so
                    answer.errors.append("disconnected before the answer was announced")
                    return answer
                await self.ws.send(json.dumps({"type": "resume", "message_id": message_id,
                                               "after_seq": answer.seqs[-1] if answer.seqs else 0}))
                continue
            kind = frame.get("type")
            if kind == "message" and frame["message"]["role"] == "assistant":
                body = frame["message"]
                if message_id is None and body["status"] == "pending":
                    message_id = body["id"]
                elif body["id"] == message_id:
                    if body["status"] in ("pending", "streaming"):  # a resume snapshot: the row's text so far
                        if len(body["content"]) > len(answer.text) or body["seq"] > (answer.seqs or [0])[-1]:
                            answer.text, answer.resumed = body["content"], True
                            answer.seqs.append(body["seq"])
                    else:
                        answer.final_text = body["content"]
                        if body["seq"] > (answer.seqs or [0])[-1]:  # deltas were lost: the page takes
                            answer.text, answer.resumed = body["content"], True  # the row's text (chat.js)
                            answer.seqs.append(body["seq"])
            elif kind == "delta" and frame["message_id"] == message_id:
                last = answer.seqs[-1] if answer.seqs else 0
                if frame["seq"] <= last:
                    continue  # already in the text from a resume snapshot
                if frame["seq"] != last + 1:  # frames were lost: take the row's text
                    await self.ws.send(json.dumps({"type": "resume", "message_id": message_id, "after_seq": last}))
                    continue
                if answer.first_at is None:
                    answer.first_at = time.perf_counter()
                answer.seqs.append(frame["seq"])
                answer.text += frame["content"]
            elif kind == "done" and frame["message_id"] == message_id:
                answer.done_at = time.perf_counter()
                answer.finish_reason = frame["finish_reason"]
                answer.tokens = frame["usage"]["completion_tokens"]
                if answer.final_text is None:  # the done frame of a resume: the row is final
                    answer.final_text = answer.text
                return answer
            elif kind == "error":
                answer.errors.append(f"{frame.get('code')}: {frame.get('message')}")
                if message_id is None or frame.get("message_id") not in (None, message_id):
                    return answer
        answer.errors.append("timed out")
        return answer


async def api_stream(port: int, key: str, model: str, text: str, max_tokens: int, timeout: float = 120,
                     answer: Answer | None = None) -> Answer:
    """One streamed completion (the caller compares its text with the saved row, found by the id);
    `answer` is filled in as the stream goes, so a caller that gives up can see how far it got."""
    answer = answer or Answer(sent_at=time.perf_counter())
    answer.sent_at = time.perf_counter()
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}]}
    seq = 0
    async with httpx.AsyncClient(timeout=timeout) as client:
        async with client.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as response:
            if response.status_code != 200:
                answer.errors.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                return answer
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    answer.done_at = time.perf_counter()
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    answer.errors.append(chunk["error"]["message"])
                    continue
                answer.completion_id = chunk["id"]
                if chunk.get("usage"):
                    answer.tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk["choices"]:
                    content = choice["delta"].get("content") or ""
                    if content:
                        if answer.first_at is None:
                            answer.first_at = time.perf_counter()
                        seq += 1
                        answer.seqs.append(seq)
                        answer.text += content
                    if choice.get("finish_reason"):
                        answer.finish_reason = choice["finish_reason"]
    return answer
