"""Shared measuring code of the benchmark commands: one prompt streamed through the engine
alone, and through the whole stack (a WebSocket client → daphne → Celery worker → engine →
Redis → daphne → client) on loopback."""
from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from django.conf import settings

from chat.accounts import api_keys
from chat.conversations.models import Conversation
from chat.core.redis_server import ensure_redis, free_port
from chat.devtools.resilience.stack import database_url
from inference.engine import Engine, GenerationStats, SamplingParams

# Greedy decoding of the demo model writes text from the first token for this prompt (for some
# prompts it first emits dozens of special tokens, which show no text and would skew TTFT).
PROMPT = "Hello, who are you?"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100), nearest rank; nan when there is nothing to rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def engine_run(engine: Engine, ids: list[int], max_new: int, **params: Any) -> dict[str, Any]:
    """One greedy generation: time to first text, token arrival times, stats."""
    stats = GenerationStats()
    start = time.perf_counter()
    arrivals: list[float] = []
    for _ in engine.generate(ids, SamplingParams(max_new, temperature=0, **params), stats):
        arrivals.append(time.perf_counter())
    end = time.perf_counter()
    return {"start": start, "first": arrivals[0] if arrivals else end, "end": end, "arrivals": arrivals,
            "tokens": stats.completion_tokens}


def streams_figures(results: list[dict[str, Any]], elapsed: float) -> dict[str, float]:
    """Aggregate tokens/s, time to first text (p50, p99) and the gap between text arrivals (p99) of
    streams that ran together; each result has start, first, end, arrivals and tokens."""
    ttfts = [(r["first"] - r["start"]) * 1000 for r in results]
    gaps = [(b - a) * 1000 for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)]
    return {"streams": len(results),
            "aggregate_tokens_per_s": round(sum(r["tokens"] for r in results) / elapsed, 1),
            "ttft_ms_p50": round(median(ttfts), 1), "ttft_ms_p99": round(percentile(ttfts, 99), 1),
            "gap_ms_p99": round(percentile(gaps, 99), 1),
            "tokens_per_s_p50": round(median([r["tokens"] / (r["end"] - r["start"]) for r in results]), 1)}


def engine_concurrent(engine: Engine, ids: list[int], max_new: int, streams: int) -> dict[str, float]:
    """`streams` identical requests at once through the engine: aggregate tokens/s and TTFT."""
    results: list[dict[str, Any]] = [{} for _ in range(streams)]

    def run(i: int) -> None:
        results[i] = engine_run(engine, ids, max_new)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return streams_figures(results, time.perf_counter() - started)


def engine_bench(engine: Engine, runs: int, max_new: int) -> dict[str, float]:
    ids = engine.encode_chat([{"role": "user", "content": PROMPT}], max_new)
    engine_run(engine, ids, max_new)  # warm-up
    measured = [engine_run(engine, ids, max_new) for _ in range(runs)]
    return {
        "ttft_ms_p50": round(median([(r["first"] - r["start"]) * 1000 for r in measured]), 1),
        "tokens_per_s_p50": round(median([r["tokens"] / (r["end"] - r["start"]) for r in measured]), 1),
    }


# ---- through the whole stack ---------------------------------------------------------------------
async def _wait_for_port(port: int) -> None:
    for _ in range(600):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("daphne did not start")


async def _ask(port: int, cookie: str, conversation_id: Any, together: asyncio.Barrier | None = None) -> dict[str, Any]:
    """One answer through a WebSocket: its timings, and whether the text it heard is the saved text with
    every seq once (`lost`/`repeated` count deltas whose seq skipped ahead or came again). With `together`,
    the message is sent once every socket of the group is open: people press Enter on pages already open."""
    import websockets

    url = f"ws://127.0.0.1:{port}/ws/chat/{conversation_id}/"
    headers = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        if together is not None:
            await together.wait()
        start = time.perf_counter()
        await ws.send(json.dumps({"type": "send", "content": PROMPT, "client_id": "bench"}))
        first = None
        arrivals: list[float] = []
        text, seq, lost, repeated, saved, queued = "", 0, 0, 0, None, None
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 600))
            if frame["type"] == "delta":
                now = time.perf_counter()
                first = first or now
                arrivals.append(now)
                if frame["seq"] <= seq:
                    repeated += 1
                    continue
                lost += frame["seq"] - seq - 1
                seq = frame["seq"]
                text += frame.get("content") or ""
            elif frame["type"] == "message" and frame["message"].get("role") == "assistant":
                if frame["message"].get("status") not in ("pending", "streaming"):
                    saved = frame["message"].get("content") or ""
                elif queued is None:
                    queued = time.perf_counter()  # the web saved and queued it: the rest is the worker's
            elif frame["type"] == "error":
                raise RuntimeError(frame["message"])
            elif frame["type"] == "done":
                end = time.perf_counter()
                tokens = frame["usage"]["completion_tokens"]
                wrong = int(saved is not None and saved != text)
                return {"start": start, "first": first or end, "end": end, "tokens": tokens, "arrivals": arrivals,
                        "lost": lost + wrong, "repeated": repeated, "queued": queued or start}


async def _sse_lines(port: int, path: str, body: bytes, key: str):
    """POST `body` and yield the response's lines, on a bare asyncio connection: httpx spent more CPU than
    the server's whole /v1 path, on the cores the server shares with it. Raises on a status other than 200."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                      ).encode() + body)
        await writer.drain()
        status = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if b" 200 " not in status:
            raise RuntimeError(f"/v1 answered {status.decode().strip()}: {(await reader.read(300))!r}")
        chunked = headers.get("transfer-encoding") == "chunked"
        pending = b""
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                pending += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
                pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode()
    finally:
        writer.close()


async def _ask_api(port: int, key: str, model: str) -> dict[str, Any]:
    """One streamed /v1/chat/completions request, timed like a socket answer."""
    body = json.dumps({"model": model, "stream": True, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": PROMPT}]}).encode()
    start = time.perf_counter()
    first = None
    tokens = 0
    arrivals: list[float] = []
    text, answer_id = "", ""
    async for line in _sse_lines(port, "/v1/chat/completions", body, key):
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(chunk["error"]["message"])
        answer_id = chunk.get("id", answer_id)
        content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
        if content:
            now = time.perf_counter()
            first = first or now
            arrivals.append(now)
            text += content
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"start": start, "first": first or end, "end": end, "tokens": tokens, "arrivals": arrivals,
            "text": text, "message_id": answer_id.removeprefix("chatcmpl-")}


def _api_text_check(results: list[dict[str, Any]]) -> None:
    """An SSE stream has no seq: its text is compared with the saved answer (0 or 1 per stream)."""
    from chat.conversations.models import Message

    saved = dict(Message.objects.filter(id__in=[r["message_id"] for r in results]).values_list("id", "content"))
    for r in results:
        stored = saved.get(uuid.UUID(r["message_id"]))
        r["lost"] = int(stored is None or not stored.startswith(r["text"]) or stored != r["text"])
        r["repeated"] = int(stored is not None and len(r["text"]) > len(stored))


class CpuMeter:
    """CPU seconds the worker, the web server and this client spent between two readings (where the time
    goes when they share the machine's cores)."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.processes["client"] = psutil.Process()
        self._last = self.read()

    def read(self) -> dict[str, float]:
        return {name: sum(p.cpu_times()[:2]) for name, p in self.processes.items()}

    def lap(self) -> dict[str, float]:
        now = self.read()
        spent = {name: round(now[name] - self._last[name], 2) for name in now}
        self._last = now
        return spent


def _level(results: list[dict[str, Any]], elapsed: float, cpu: CpuMeter | None = None) -> dict[str, Any]:
    figures: dict[str, Any] = streams_figures(results, elapsed)
    figures["lost"] = sum(r["lost"] for r in results)
    figures["repeated"] = sum(r["repeated"] for r in results)
    if all("queued" in r for r in results):  # the socket: how much of the wait was the web's
        queued = [(r["queued"] - r["start"]) * 1000 for r in results]
        figures["queued_ms_p50"], figures["queued_ms_p99"] = round(median(queued), 1), round(percentile(queued, 99), 1)
    if cpu is not None:
        figures["cpu_seconds"] = cpu.lap()
    return figures


async def _drive(port: int, cookie: str, key: str, model: str, conversations: list[Any], runs: int,
                 levels: list[int], pids: dict[str, int]) -> dict[str, Any]:
    await _wait_for_port(port)
    pool = iter(conversations)
    await _ask(port, cookie, next(pool))  # warm-up: the worker loads the model
    await _ask_api(port, key, model)
    out: dict[str, Any] = {"socket": {}, "api": {}}
    single = [await _ask(port, cookie, next(pool)) for _ in range(runs)]
    out["socket"]["single"] = _level(single, sum(r["end"] - r["start"] for r in single))
    single_api = [await _ask_api(port, key, model) for _ in range(runs)]
    await asyncio.to_thread(_api_text_check, single_api)
    out["api"]["single"] = _level(single_api, sum(r["end"] - r["start"] for r in single_api))
    for level in levels:
        cpu = CpuMeter(pids)
        barrier = asyncio.Barrier(level)
        together = await asyncio.gather(*(_ask(port, cookie, next(pool), barrier) for _ in range(level)))
        started = min(r["start"] for r in together)
        out["socket"][level] = _level(together, max(r["end"] for r in together) - started, cpu)
        await asyncio.sleep(0.5)  # the last answers' end (audit, frames) is not the next level's
        cpu.lap()
        started = time.perf_counter()
        together = await asyncio.gather(*(_ask_api(port, key, model) for _ in range(level)))
        elapsed = time.perf_counter() - started
        spent = cpu.lap()
        await asyncio.to_thread(_api_text_check, together)
        out["api"][level] = _level(together, elapsed)
        out["api"][level]["cpu_seconds"] = spent
    return out


def stack_bench(model_entry: dict[str, Any], runs: int, levels: list[int],
                worker_concurrency: int | None = None) -> dict[str, Any]:
    """Start a worker and daphne for `model_entry` (the worker's concurrency: the settings' default unless
    given), then stream `runs` answers one at a time and `level` answers at once for each level, through a
    real WebSocket and through /v1 (SSE). Returns {"socket": {...}, "api": {...}}, keyed "single" and by level."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    redis = ensure_redis(settings.REDIS_URL)
    port = free_port()
    env = {**os.environ, "DEEPSEEK_MODELS": json.dumps([model_entry]), "LOG_LEVEL": "WARNING",
           # The subprocesses use this process's database and Redis (the test ones under pytest).
           "DATABASE_URL": database_url(), "REDIS_URL": redis.url if redis else settings.REDIS_URL,
           # The benchmark measures the path, not the per-user limits.
           "API_CONCURRENT_REQUESTS": "0", "API_REQUESTS_PER_MINUTE": "0", "API_TOKENS_PER_DAY": "0",
           "CHAT_ACTIVE_ANSWERS_PER_USER": "0", "CHAT_MESSAGES_PER_MINUTE": "0", "CHAT_TOKENS_PER_DAY": "0",
           # One user holds every socket of a level (48, 128): past SOCKETS_PER_USER they would be closed.
           "SOCKETS_PER_USER": "0"}
    worker = [sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-P", "threads",
              "-Q", model_entry["queue"], "--loglevel", "WARNING", "-n", f"bench-{port}@%h"]
    if worker_concurrency:
        worker += ["-c", str(worker_concurrency)]
    user = get_user_model().objects.create_user(f"bench-{uuid.uuid4().hex[:8]}")
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    processes = [
        subprocess.Popen(worker, env=env, cwd=settings.BASE_DIR),
        subprocess.Popen([sys.executable, "-m", "deepseek_web.daphne_server", "-b", "127.0.0.1", "-p", str(port),
                          "deepseek_web.asgi:application"], env=env, cwd=settings.BASE_DIR,
                         stderr=subprocess.DEVNULL),
    ]
    try:
        conversations = [Conversation.objects.create(user=user, model=model_entry["name"]).id
                         for _ in range(runs + 1 + sum(levels))]
        key = api_keys.do_create_key(user, "bench")[1]
        pids = {"worker": processes[0].pid, "web": processes[1].pid}
        return asyncio.run(_drive(port, cookie, key, model_entry["name"], conversations, runs, levels, pids))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        user.delete()
        if redis is not None:
            redis.stop()


def socket_bench(model_entry: dict[str, Any], runs: int, concurrency: int) -> dict[str, Any]:
    """The socket figures for one level in the older flat shape (bench_inference), with the API's under "api"."""
    measured = stack_bench(model_entry, runs, [concurrency])

    def flat(path: dict[str, Any]) -> dict[str, Any]:
        return {"ttft_ms_p50": path["single"]["ttft_ms_p50"], "tokens_per_s_p50": path["single"]["tokens_per_s_p50"],
                "concurrent_streams": concurrency,
                "concurrent_aggregate_tokens_per_s": path[concurrency]["aggregate_tokens_per_s"],
                "concurrent_ttft_ms_p50": path[concurrency]["ttft_ms_p50"]}

    return {**flat(measured["socket"]), "api": flat(measured["api"])}
