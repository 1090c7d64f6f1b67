"""`manage.py bench_stream`: time to first token and tokens/s, engine alone vs through the socket
vs through the /v1 API (SSE).

The socket and API paths are the real ones: a daphne and a Celery worker subprocess, Redis, the
database, and a WebSocket or HTTP client on loopback. Prints a table, then the same figures as JSON.
"""
from __future__ import annotations

import json
import uuid

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from chat.core.served_models import default_model
from chat.devtools.stack_bench import PROMPT, engine_bench, engine_concurrent, socket_bench
from inference.batching import BatchConfig
from inference.engine import Engine
from inference.loading import load_model
from inference.registry import parse_models


class Command(BaseCommand):
    help = "Benchmark streaming on the default model: the engine alone, then the full socket path."

    def add_arguments(self, parser):
        parser.add_argument("--runs", type=int, default=5)
        parser.add_argument("--tokens", type=int, default=128)
        parser.add_argument("--concurrency", type=int, default=4)

    def handle(self, *args, runs: int, tokens: int, concurrency: int, **options):
        spec = default_model()
        if spec.demo:
            call_command("build_demo_models", if_missing=True)
        # Greedy with a fixed length: every run decodes the same number of tokens.
        entry = {"name": spec.name, "path": spec.path, "quantization": spec.quantization,
                 "max_context": spec.max_context, "max_new_tokens": tokens, "temperature": 0,
                 "queue": f"bench.{uuid.uuid4().hex[:8]}"}
        [bench_spec] = parse_models([entry])
        engine = Engine(load_model(bench_spec), bench_spec, BatchConfig(
            page_size=settings.ENGINE_KV_PAGE_SIZE, num_blocks=settings.ENGINE_KV_BLOCKS,
            max_batch_tokens=settings.ENGINE_MAX_BATCH_TOKENS))
        try:
            alone = engine_bench(engine, runs, tokens)
            ids = engine.encode_chat([{"role": "user", "content": PROMPT}], tokens)
            together = engine_concurrent(engine, ids, tokens, concurrency)
        finally:
            engine.batcher.stop()
        alone["concurrent_aggregate_tokens_per_s"] = round(together["aggregate_tokens_per_s"], 1)
        alone["concurrent_ttft_ms_p50"] = round(together["ttft_ms_p50"], 1)
        results = {"model": spec.name, "quantization": spec.quantization, "new_tokens": tokens, "runs": runs,
                   "concurrency": concurrency, "engine": alone, "socket": socket_bench(entry, runs, concurrency)}
        results["api"] = results["socket"].pop("api")
        e, s, a = results["engine"], results["socket"], results["api"]
        self.stdout.write(f"\n{spec.name} ({spec.quantization}), {tokens} new tokens, {runs} runs\n")
        self.stdout.write(f"{'':44} {'engine alone':>14} {'socket path':>14} {'API (SSE)':>14}")
        for label, key in (("time to first token, p50 (ms)", "ttft_ms_p50"),
                           ("tokens/s per stream, p50", "tokens_per_s_p50"),
                           (f"aggregate tokens/s, {concurrency} streams", "concurrent_aggregate_tokens_per_s"),
                           (f"time to first token, {concurrency} streams (ms)", "concurrent_ttft_ms_p50")):
            self.stdout.write(f"{label:44} {e[key]!s:>14} {s[key]!s:>14} {a[key]!s:>14}")
        self.stdout.write("\n" + json.dumps(results, indent=2))
