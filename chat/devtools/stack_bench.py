"""Shared measuring code of the benchmark commands: one prompt streamed through the engine
alone, and through the whole stack (a WebSocket client → daphne → Celery worker → engine →
Redis → daphne → client) on loopback."""
from __future__ import annotations

import asyncio
import json
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
    elapsed = time.perf_counter() - started
    return {"aggregate_tokens_per_s": sum(r["tokens"] for r in results) / elapsed,
            "ttft_ms_p50": median([(r["first"] - r["start"]) * 1000 for r in results])}


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


async def _ask(port: int, cookie: str, conversation_id: Any) -> dict[str, Any]:
    import websockets

    url = f"ws://127.0.0.1:{port}/ws/chat/{conversation_id}/"
    headers = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        start = time.perf_counter()
        await ws.send(json.dumps({"type": "send", "content": PROMPT, "client_id": "bench"}))
        first = None
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 300))
            if frame["type"] == "delta" and first is None:
                first = time.perf_counter()
            elif frame["type"] == "error":
                raise RuntimeError(frame["message"])
            elif frame["type"] == "done":
                end = time.perf_counter()
                tokens = frame["usage"]["completion_tokens"]
                return {"start": start, "first": first or end, "end": end, "tokens": tokens}


async def _ask_api(port: int, key: str, model: str) -> dict[str, Any]:
    """One streamed /v1/chat/completions request, timed like a socket answer."""
    import httpx

    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}]}
    async with httpx.AsyncClient(timeout=300) as client:
        start = time.perf_counter()
        first = None
        tokens = 0
        async with client.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                    first = time.perf_counter()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        end = time.perf_counter()
    return {"start": start, "first": first or end, "end": end, "tokens": tokens}


def _figures(single: list[dict[str, Any]], together: list[dict[str, Any]], elapsed: float,
             concurrency: int) -> dict[str, float]:
    return {
        "ttft_ms_p50": round(median([(r["first"] - r["start"]) * 1000 for r in single]), 1),
        "tokens_per_s_p50": round(median([r["tokens"] / (r["end"] - r["start"]) for r in single]), 1),
        "concurrent_streams": concurrency,
        "concurrent_aggregate_tokens_per_s": round(sum(r["tokens"] for r in together) / elapsed, 1),
        "concurrent_ttft_ms_p50": round(median([(r["first"] - r["start"]) * 1000 for r in together]), 1),
    }


async def _drive_api(port: int, key: str, model: str, runs: int, concurrency: int) -> dict[str, float]:
    single = [await _ask_api(port, key, model) for _ in range(runs)]
    started = time.perf_counter()
    together = await asyncio.gather(*(_ask_api(port, key, model) for _ in range(concurrency)))
    return _figures(single, together, time.perf_counter() - started, concurrency)


async def _drive(port: int, cookie: str, conversation_ids: list, runs: int, concurrency: int) -> dict[str, float]:
    await _wait_for_port(port)
    await _ask(port, cookie, conversation_ids[0])  # warm-up: the worker loads the model
    single = [await _ask(port, cookie, c) for c in conversation_ids[1 : runs + 1]]
    started = time.perf_counter()
    together = await asyncio.gather(*(_ask(port, cookie, c) for c in conversation_ids[runs + 1 :]))
    elapsed = time.perf_counter() - started
    return _figures(single, together, elapsed, concurrency)


def socket_bench(model_entry: dict[str, Any], runs: int, concurrency: int) -> dict[str, float]:
    """Start a worker and daphne for `model_entry`, and stream through a real WebSocket."""
    from django.contrib.auth import get_user_model
    from django.test import Client


    redis = ensure_redis(settings.REDIS_URL)
    port = free_port()
    env = {**os.environ, "DEEPSEEK_MODELS": json.dumps([model_entry]), "LOG_LEVEL": "WARNING",
           # The subprocesses use this process's database and Redis (the test ones under pytest).
           "DATABASE_URL": database_url(), "REDIS_URL": redis.url if redis else settings.REDIS_URL,
           # The API leg measures the path, not the per-user limits.
           "API_CONCURRENT_REQUESTS": "0", "API_REQUESTS_PER_MINUTE": "0", "API_TOKENS_PER_DAY": "0"}
    user = get_user_model().objects.create_user(f"bench-{uuid.uuid4().hex[:8]}")
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    processes = [
        subprocess.Popen([sys.executable, "-m", "celery", "-A", "deepseek_web", "worker", "-P", "threads",
                          "-c", str(max(4, concurrency)), "-Q", model_entry["queue"], "--loglevel", "WARNING",
                          "-n", f"bench-{port}@%h"], env=env, cwd=settings.BASE_DIR),
        subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                          "deepseek_web.asgi:application"], env=env, cwd=settings.BASE_DIR,
                         stderr=subprocess.DEVNULL),
    ]
    try:
        conversation_ids = [Conversation.objects.create(user=user, model=model_entry["name"]).id
                            for _ in range(runs + 1 + concurrency)]
        results = asyncio.run(_drive(port, cookie, conversation_ids, runs, concurrency))
        # The same answers through /v1 (SSE): the API's own cost on top of the same road.
        key = api_keys.do_create_key(user, "bench")[1]
        results["api"] = asyncio.run(_drive_api(port, key, model_entry["name"], runs, concurrency))
        return results
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
