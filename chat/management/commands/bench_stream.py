"""`manage.py bench_stream`: time to first token and tokens/s, engine alone vs through the socket.

The socket path is the real one: a daphne and a Celery worker subprocess, Redis, the database,
and a WebSocket client on loopback. Prints a table, then the same figures as JSON.
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from deepseek_web.redis_server import ensure_redis, free_port
from inference.engine import Engine, GenerationStats, SamplingParams
from inference.loading import load_model
from inference.registry import default_model, parse_models

# Greedy decoding of the demo model writes text from the first token for this prompt (for some
# prompts it first emits dozens of special tokens, which show no text and would skew TTFT).
PROMPT = "Hello, who are you?"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Command(BaseCommand):
    help = "Benchmark streaming on the demo model: the engine alone, then the full socket path."

    def add_arguments(self, parser):
        parser.add_argument("--runs", type=int, default=5)
        parser.add_argument("--tokens", type=int, default=128)
        parser.add_argument("--concurrency", type=int, default=4)

    def handle(self, *args, runs: int, tokens: int, concurrency: int, **options):
        spec = default_model()
        if spec.demo:
            call_command("build_demo_models", if_missing=True)
        # Greedy with a fixed length: every run decodes the same number of tokens.
        model_entry = {"name": spec.name, "path": spec.path, "quantization": spec.quantization,
                       "max_context": spec.max_context, "max_new_tokens": tokens, "temperature": 0,
                       "queue": f"bench.{uuid.uuid4().hex[:8]}"}
        [bench_spec] = parse_models([model_entry])
        results = {"model": spec.name, "quantization": spec.quantization, "new_tokens": tokens, "runs": runs,
                   "engine": self.bench_engine(bench_spec, runs),
                   "socket": self.bench_socket(model_entry, runs, concurrency)}
        self.print_table(results)
        self.stdout.write(json.dumps(results, indent=2))

    # -- the engine alone ----------------------------------------------------------------------
    def bench_engine(self, spec, runs: int) -> dict:
        engine = Engine(load_model(spec), spec)
        ids = engine.encode_chat([{"role": "user", "content": PROMPT}], spec.max_new_tokens)
        params = SamplingParams(max_new_tokens=spec.max_new_tokens, temperature=0)
        ttft, rates, first_text_token = [], [], 0
        for run in range(runs + 1):  # the first run warms up and is not counted
            stats = GenerationStats()
            start = time.perf_counter()
            first = None
            for _ in engine.generate(ids, params, stats):
                if first is None:
                    first, first_text_token = time.perf_counter(), stats.completion_tokens
            end = time.perf_counter()
            if run:
                ttft.append((first - start) * 1000)
                rates.append((stats.completion_tokens - first_text_token) / (end - first))
        return {"ttft_ms_p50": round(_median(ttft), 1), "tokens_per_s_p50": round(_median(rates), 1),
                "first_text_at_token": first_text_token}

    # -- through daphne + Celery + Redis + the database ------------------------------------------
    def bench_socket(self, model_entry: dict, runs: int, concurrency: int) -> dict:
        from django.contrib.auth import get_user_model
        from django.test import Client

        from chat.models import Conversation

        redis = ensure_redis(settings.REDIS_URL)
        port = free_port()
        env = {**os.environ, "DEEPSEEK_MODELS": json.dumps([model_entry]), "LOG_LEVEL": "WARNING"}
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
            conversations = [
                Conversation.objects.create(user=user, model=model_entry["name"]) for _ in range(runs + 1 + concurrency)
            ]
            return asyncio.run(self._drive(port, cookie, conversations, runs, concurrency))
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)
            user.delete()
            if redis is not None:
                redis.stop()

    async def _ask(self, port: int, cookie: str, conversation) -> dict:
        import websockets

        url = f"ws://127.0.0.1:{port}/ws/chat/{conversation.id}/"
        headers = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"}
        async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
            start = time.perf_counter()
            await ws.send(json.dumps({"type": "send", "content": PROMPT, "client_id": "bench"}))
            first = None
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if frame["type"] == "delta" and first is None:
                    first = time.perf_counter()
                if frame["type"] == "error":
                    raise RuntimeError(frame["message"])
                if frame["type"] == "done":
                    end = time.perf_counter()
                    return {"start": start, "first": first, "end": end,
                            "tokens": frame["usage"]["completion_tokens"]}

    async def _wait_for_server(self, port: int) -> None:
        for _ in range(300):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError("daphne did not start")

    async def _drive(self, port: int, cookie: str, conversations: list, runs: int, concurrency: int) -> dict:
        await self._wait_for_server(port)
        await self._ask(port, cookie, conversations[0])  # warm-up: the worker loads the model
        ttft, rates = [], []
        for conversation in conversations[1 : runs + 1]:
            r = await self._ask(port, cookie, conversation)
            ttft.append((r["first"] - r["start"]) * 1000)
            rates.append((r["tokens"] - 1) / (r["end"] - r["first"]))
        started = time.perf_counter()
        together = await asyncio.gather(*(self._ask(port, cookie, c) for c in conversations[runs + 1 :]))
        elapsed = time.perf_counter() - started
        return {
            "ttft_ms_p50": round(_median(ttft), 1),
            "tokens_per_s_p50": round(_median(rates), 1),
            "concurrent_streams": concurrency,
            "concurrent_aggregate_tokens_per_s": round(sum(r["tokens"] for r in together) / elapsed, 1),
            "concurrent_ttft_ms_p50": round(_median([(r["first"] - r["start"]) * 1000 for r in together]), 1),
        }

    def print_table(self, results: dict) -> None:
        e, s = results["engine"], results["socket"]
        rows = [
            ("time to first token, p50 (ms)", e["ttft_ms_p50"], s["ttft_ms_p50"]),
            ("tokens/s after the first, p50", e["tokens_per_s_p50"], s["tokens_per_s_p50"]),
            (f"aggregate tokens/s, {s['concurrent_streams']} streams", "-", s["concurrent_aggregate_tokens_per_s"]),
            (f"time to first token with {s['concurrent_streams']} streams (ms)", "-", s["concurrent_ttft_ms_p50"]),
        ]
        self.stdout.write(f"\n{results['model']} ({results['quantization']}), {results['new_tokens']} new tokens, "
                          f"{results['runs']} runs, {Path(settings.BASE_DIR).name}\n")
        self.stdout.write(f"{'':44} {'engine alone':>14} {'socket path':>14}")
        for label, engine, socket in rows:
            self.stdout.write(f"{label:44} {engine!s:>14} {socket!s:>14}")
        self.stdout.write("")
