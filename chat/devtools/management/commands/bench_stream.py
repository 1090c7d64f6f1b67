"""`manage.py bench_stream`: aggregate tokens/s, time to first token and gaps between text arrivals at
several numbers of concurrent streams, engine alone vs through the socket vs through the /v1 API (SSE),
and lost or repeated text (must be 0).

The socket and API paths are the real ones: a daphne and a Celery worker subprocess (on the settings'
defaults unless --worker-concurrency), Redis, the database, and WebSocket or HTTP clients on loopback.
Prints a table, then the same figures as JSON.
"""
from __future__ import annotations

import json
import uuid

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from chat.core.served_models import default_model
from chat.devtools.stack_bench import PROMPT, engine_bench, engine_concurrent, stack_bench
from inference.batching import BatchConfig
from inference.engine import Engine
from inference.loading import load_model
from inference.registry import parse_models


def levels_of(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--levels takes numbers separated by commas, not {text!r}") from None
    if not levels or min(levels) < 1:
        raise CommandError("--levels needs at least one number of streams, each at least 1")
    return levels


class Command(BaseCommand):
    help = "Benchmark streaming on the default model at several concurrencies: engine alone, socket, /v1."

    def add_arguments(self, parser):
        parser.add_argument("--runs", type=int, default=5, help="answers one at a time (the single-user figures)")
        parser.add_argument("--tokens", type=int, default=64)
        parser.add_argument("--levels", default="1,8,48,128", help="numbers of concurrent streams")
        parser.add_argument("--concurrency", type=int, help="one level only (the older option)")
        parser.add_argument("--worker-concurrency", type=int, help="the worker's -c (default: the settings')")

    def handle(self, *args, runs: int, tokens: int, levels: str, concurrency: int | None,
               worker_concurrency: int | None, **options):
        counts = [concurrency] if concurrency else levels_of(levels)
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
            engine_levels = {n: engine_concurrent(engine, ids, tokens, n) for n in counts}
        finally:
            engine.batcher.stop()
        stack = stack_bench(entry, runs, counts, worker_concurrency)
        results = {"model": spec.name, "quantization": spec.quantization, "new_tokens": tokens, "runs": runs,
                   "worker_concurrency": worker_concurrency or settings.CELERY_WORKER_CONCURRENCY,
                   "engine": {"single": alone, **engine_levels}, "socket": stack["socket"], "api": stack["api"]}
        self.print_table(results, counts)
        self.stdout.write("\n" + json.dumps(results, indent=2))

    def print_table(self, r: dict, counts: list[int]) -> None:
        e, s, a = r["engine"], r["socket"], r["api"]
        self.stdout.write(f"\n{r['model']} ({r['quantization']}), {r['new_tokens']} new tokens, "
                          f"worker concurrency {r['worker_concurrency']}\n")
        self.stdout.write(f"{'':40} {'engine alone':>14} {'socket path':>14} {'API (SSE)':>14}")

        def row(label: str, values: tuple) -> None:
            self.stdout.write(f"{label:40} " + " ".join(f"{v!s:>14}" for v in values))

        row("one stream: time to first token (ms)", (e["single"]["ttft_ms_p50"], s["single"]["ttft_ms_p50"],
                                                     a["single"]["ttft_ms_p50"]))
        row("one stream: tokens/s", (e["single"]["tokens_per_s_p50"], s["single"]["tokens_per_s_p50"],
                                     a["single"]["tokens_per_s_p50"]))
        for n in counts:
            for label, key in (("aggregate tok/s", "aggregate_tokens_per_s"), ("TTFT p50 (ms)", "ttft_ms_p50"),
                               ("TTFT p99 (ms)", "ttft_ms_p99"), ("gap between texts p99 (ms)", "gap_ms_p99")):
                row(f"{n:>3} streams: {label}", (e[n][key], s[n][key], a[n][key]))
            row(f"{n:>3} streams: x engine aggregate", ("1.0",
                f"{s[n]['aggregate_tokens_per_s'] / e[n]['aggregate_tokens_per_s']:.2f}",
                f"{a[n]['aggregate_tokens_per_s'] / e[n]['aggregate_tokens_per_s']:.2f}"))
            row(f"{n:>3} streams: x one user alone", ("",
                f"{s[n]['aggregate_tokens_per_s'] / s['single']['tokens_per_s_p50']:.1f}",
                f"{a[n]['aggregate_tokens_per_s'] / a['single']['tokens_per_s_p50']:.1f}"))
            row(f"{n:>3} streams: queued by the web p50/p99", ("", f"{s[n]['queued_ms_p50']}/{s[n]['queued_ms_p99']}",
                                                                ""))
            row(f"{n:>3} streams: CPU s worker/web/client", ("",
                "/".join(f"{v:.1f}" for v in s[n]["cpu_seconds"].values()),
                "/".join(f"{v:.1f}" for v in a[n]["cpu_seconds"].values())))
            row(f"{n:>3} streams: lost / repeated", ("", f"{s[n]['lost']} / {s[n]['repeated']}",
                                                     f"{a[n]['lost']} / {a[n]['repeated']}"))
