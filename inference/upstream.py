"""Answers relayed from another OpenAI-compatible server (vLLM, llama.cpp, a hosted API) as a stream."""
from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import httpx

from inference.engine import Delta, GenerationStats, SamplingParams
from inference.registry import ModelSpec

log = logging.getLogger(__name__)
FINISH_REASONS = ("stop", "length", "content_filter")
MAX_ERROR_BODY = 64 * 1024  # an error page may be large; its first part says what went wrong
MAX_MESSAGE_CHARS = 300  # of the upstream's own words in our error (Message.error holds 500)
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
          (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


class UpstreamError(RuntimeError):
    """The upstream failed this request: unreachable, too slow, refused it, or broke off mid-answer.

    The message is for the worker's log: it names the model, the upstream's status and its own words,
    never the key. The person who asked reads a stable sentence with the status and an error id
    instead (chat/worker/tasks.py), since an upstream's reply may quote anything."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the upstream's HTTP status, when it answered with one


def image_mime(data: bytes) -> str:
    """The media type of an image, from its first bytes (stored images are PNG/JPEG/WEBP/GIF)."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise UpstreamError("An attached image is not a PNG, JPEG, WEBP or GIF image.")


def chat_messages(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation in OpenAI's wire format: a turn with images becomes a text part plus
    one data-URL part per image."""
    messages: list[dict[str, Any]] = []
    for turn in history:
        images = turn.get("images") or []
        if not images:
            messages.append({"role": turn["role"], "content": turn["content"]})
            continue
        parts: list[dict[str, Any]] = [{"type": "text", "text": turn["content"]}]
        for raw in images:
            url = f"data:{image_mime(raw)};base64,{base64.b64encode(raw).decode('ascii')}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        messages.append({"role": turn["role"], "content": parts})
    return messages


def sse_events(lines: Iterator[str]) -> Iterator[str | None]:
    """The data of each server-sent event; None for each comment line (a keep-alive)."""
    data: list[str] = []
    for line in lines:
        if line.startswith(":"):
            yield None
            continue
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:  # a last event the server did not end with a blank line
        yield "\n".join(data)


class UpstreamEngine:
    """What a worker uses instead of Engine for an upstream model: loads nothing, holds one
    connection pool, and streams one chat completion per answer."""

    batcher = None  # nothing to stop at worker shutdown

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        # The timeout bounds each wait (to connect, for the next bytes), as the openai client's does:
        # a long answer that keeps streaming is never cut, a silent upstream is.
        self._client = httpx.Client(timeout=httpx.Timeout(spec.timeout))

    def close(self) -> None:
        self._client.close()

    def request_body(self, history: list[dict[str, Any]], params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.spec.upstream_model or self.spec.name,
            "messages": chat_messages(history),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _key(self) -> str:
        """Read at every request, so a rotated key needs no restart and never sits in settings."""
        if not self.spec.api_key_env:
            return ""
        key = os.environ.get(self.spec.api_key_env, "")
        if not key:
            raise UpstreamError(f"The upstream server for {self.spec.name} needs a key, and the environment "
                                f"variable {self.spec.api_key_env} that should hold it is not set.")
        return key

    def generate(
        self, history: list[dict[str, Any]], params: SamplingParams, stats: GenerationStats
    ) -> Iterator[Delta]:
        """Yield the upstream's deltas as they arrive (an empty one per keep-alive, so the caller
        may stop while the upstream is still queueing); `stats` gets the usage and finish reason.

        Closing the iterator closes the connection: that is how an OpenAI-compatible server
        learns to stop generating."""
        key = self._key()
        headers = {"Accept": "text/event-stream"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = self.request_body(history, params)
        answered = False
        try:
            with self._client.stream("POST", self.url, json=body, headers=headers) as response:
                answered = True
                if not response.is_success:
                    raise self._refusal(response, key)
                yield from self._read(response, stats, key)
        except httpx.TimeoutException as exc:
            raise self._failure(f"did not answer within {self.spec.timeout:g} s", exc) from None
        except httpx.HTTPError as exc:
            what = "broke off the answer" if answered else "cannot be reached"
            raise self._failure(f"{what} ({_scrub(str(exc) or type(exc).__name__, key)})", exc) from None

    def _failure(self, what: str, exc: Exception) -> UpstreamError:
        log.warning("upstream of %s at %s: %s: %r", self.spec.name, self.url, what, exc)
        return UpstreamError(f"The upstream server for {self.spec.name} {what}.")

    def _refusal(self, response: httpx.Response, key: str) -> UpstreamError:
        body = b""
        for part in response.iter_bytes():
            body += part
            if len(body) >= MAX_ERROR_BODY:
                break
        status = f"{response.status_code} {response.reason_phrase}".strip()
        message = _scrub(error_text(body) or "no message", key)
        log.warning("upstream of %s at %s answered %s: %s", self.spec.name, self.url, status, message)
        return UpstreamError(f"The upstream server for {self.spec.name} answered {status}: {message}",
                             status=response.status_code)

    def _read(self, response: httpx.Response, stats: GenerationStats, key: str) -> Iterator[Delta]:
        usage_seen, finished, text_chunks = False, False, 0
        for data in sse_events(response.iter_lines()):
            if data is None:
                yield Delta()
                continue
            if data.strip() == "[DONE]":
                finished = True
                break
            chunk = self._chunk(data, key)
            if isinstance(chunk.get("usage"), dict):
                usage_seen = True
                stats.prompt_tokens = _count(chunk["usage"].get("prompt_tokens"))
                stats.completion_tokens = _count(chunk["usage"].get("completion_tokens"))
            delta, reason = _first_choice(chunk)
            if reason:
                stats.finish_reason = reason if reason in FINISH_REASONS else "stop"
            if delta.content or delta.reasoning:
                text_chunks += 1
                if not usage_seen:  # an upstream that reports no usage: one chunk stands for one token
                    stats.completion_tokens = text_chunks
                yield delta
        # Some servers end without [DONE] after a finish reason; ending with neither is a cut stream.
        if not finished and not stats.finish_reason:
            raise UpstreamError(f"The upstream server for {self.spec.name} ended the stream before the answer "
                                "was finished.")
        stats.finish_reason = stats.finish_reason or "stop"

    def _chunk(self, data: str, key: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            raise UpstreamError(f"The upstream server for {self.spec.name} sent a chunk that is not a JSON object.")
        if chunk.get("error"):
            message = _scrub(_error_message(chunk["error"]) or "no message", key)
            raise UpstreamError(f"The upstream server for {self.spec.name} failed mid-answer: {message}")
        return chunk


def _first_choice(chunk: dict[str, Any]) -> tuple[Delta, str]:
    """The text and finish reason of choice 0 (we never ask for more than one)."""
    choices = chunk.get("choices")
    choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None) \
        if isinstance(choices, list) else None
    if choice is None:
        return Delta(), ""
    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
    content, reasoning = delta.get("content"), delta.get("reasoning_content")
    return (Delta(content=content if isinstance(content, str) else "",
                  reasoning=reasoning if isinstance(reasoning, str) else ""),
            choice.get("finish_reason") or "")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def error_text(body: bytes) -> str:
    """The message in an error body: OpenAI's {"error": {"message"}}, vLLM's {"message"},
    FastAPI's {"detail"}, or the start of whatever text it is."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return " ".join(body.decode("utf-8", "replace").split())[:MAX_MESSAGE_CHARS]
    if isinstance(parsed, dict):
        for key in ("error", "message", "detail"):
            if parsed.get(key):
                return _error_message(parsed[key])
    return _error_message(parsed)


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or json.dumps(error)
    text = error if isinstance(error, str) else json.dumps(error)
    return " ".join(text.split())[:MAX_MESSAGE_CHARS]


def _scrub(text: str, key: str) -> str:
    """Upstreams sometimes quote the key they refused; it must not reach a page or a log."""
    return text.replace(key, "[key]") if key else text
