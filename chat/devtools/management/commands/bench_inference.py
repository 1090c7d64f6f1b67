"""`manage.py bench_inference`: the serving engine's figures, with the issue's targets.

Full mode (default) runs on the ~100M-parameter bench model it builds offline; `--quick` runs
the same steps, smaller, on the tiny demo model (CI checks the command works, not the targets).
Prints a table, then the same figures as JSON.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from chat.devtools.stack_bench import PROMPT, engine_bench, engine_concurrent, median, socket_bench
from inference.batching import BatchConfig, BatchRunner
from inference.engine import Engine, GenerationStats, SamplingParams
from inference.loading import load_model
from inference.registry import ModelSpec

FILLER = ("The quick brown fox jumps over the lazy dog while the committee reviews the quarterly report "
          "and the engineers measure latency, throughput and memory on every machine they can find. ")


class Command(BaseCommand):
    help = "Benchmark the inference engine: batching, KV reuse, quantization, the full stack, cancel."

    def add_arguments(self, parser):
        parser.add_argument("--quick", action="store_true", help="small and fast, on the tiny demo model")
        parser.add_argument("--skip-stack", action="store_true", help="leave out the socket-path comparison")
        parser.add_argument("--model", help="another model folder or hub id (e.g. a bigger one on a GPU host)")

    def handle(self, *args, quick: bool, skip_stack: bool, model: str | None, **options):
        call_command("build_demo_models", if_missing=True, bench=not quick, verbosity=0)
        name = "demo-chat" if quick else "bench-100m"
        path = model or str(settings.DEMO_MODELS_DIR / name)
        name = "custom" if model else name
        self.spec = ModelSpec(name=name, path=path, max_context=4096, max_new_tokens=64)
        self.new_tokens = 8 if quick else 64
        streams = [1, 2] if quick else [1, 4, 8, 16]
        self.batch = BatchConfig(page_size=32, num_blocks=1024 if quick else 2048, max_batch_tokens=1024)
        results: dict[str, Any] = {"model": name, "quick": quick, "new_tokens": self.new_tokens,
                                   "dtype": "float32 on CPU, bfloat16 on CUDA (dtype auto)"}
        engine = Engine(load_model(self.spec), self.spec, self.batch)
        try:
            results["params_millions"] = round(sum(p.numel() for p in engine.model.parameters()) / 1e6, 1)
            results["batching"] = self.bench_batching(engine, streams)
            results["kv_reuse"] = self.bench_reuse(engine, 200 if quick else 1000)
            results["cancel"] = self.bench_cancel(engine, 4 if quick else 8)
            if not skip_stack:
                results["stack"] = self.bench_stack(engine, 2 if quick else 4)
        finally:
            engine.batcher.stop()
        results["quantization"] = self.bench_quantization()
        self.print_table(results)
        self.stdout.write(json.dumps(results, indent=2))

    # 1. aggregate tokens/s by concurrent streams --------------------------------------------------
    def bench_batching(self, engine: Engine, streams: list[int]) -> dict[str, Any]:
        ids = engine.encode_chat([{"role": "user", "content": PROMPT}], self.new_tokens)
        engine_concurrent(engine, ids, self.new_tokens, 1)  # warm-up
        rates = {n: engine_concurrent(engine, ids, self.new_tokens, n)["aggregate_tokens_per_s"] for n in streams}
        return {"aggregate_tokens_per_s": {str(n): round(r, 1) for n, r in rates.items()},
                "ratio_to_one_stream": {str(n): round(r / rates[1], 2) for n, r in rates.items()},
                "target": "ratio >= 6 at 8 streams"}

    # 2. turn-2 time to first token with a long history: reuse vs recompute ---------------------------
    def _first_token_ms(self, runner: BatchRunner, ids: list[int]) -> float:
        start = time.perf_counter()
        stream = runner.stream(ids, 1, 0.0, 1.0)
        next(stream)
        elapsed = (time.perf_counter() - start) * 1000
        stream.close()
        return elapsed

    def bench_reuse(self, engine: Engine, history_tokens: int) -> dict[str, Any]:
        text = FILLER * (history_tokens // len(engine.tokenizer(FILLER)["input_ids"]) + 1)
        ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"][:history_tokens]
        history = [{"role": "user", "content": engine.tokenizer.decode(ids)}]
        reuse, recompute = [], []
        for run in range(3):
            key = f"bench-{uuid.uuid4().hex}"
            first_ids = engine.encode_chat(history, 16, conversation=key)
            answer_stats = GenerationStats()
            answer = "".join(d.content for d in engine.generate(first_ids, SamplingParams(16, temperature=0),
                                                                answer_stats))
            engine.remember_turn(key, history, answer, first_ids, answer_stats)
            follow = history + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
            second_ids = engine.encode_chat(follow, 16, conversation=key)
            reuse.append(self._first_token_ms(engine.batcher, second_ids))
            fresh = BatchRunner(engine.batcher.loaded, engine.eos_ids, self.batch)  # an empty KV cache
            try:
                recompute.append(self._first_token_ms(fresh, second_ids))
            finally:
                fresh.stop()
            history = [{"role": "user", "content": f"{run} " + history[0]["content"]}]  # a new prefix next run
        ratio = median(reuse) / median(recompute)
        return {"history_tokens": len(second_ids), "ttft_ms_reuse": round(median(reuse), 1),
                "ttft_ms_recompute": round(median(recompute), 1), "ratio": round(ratio, 3),
                "target": "ratio <= 0.2"}

    # 5. cancel one of N streams ---------------------------------------------------------------------
    def _streams(self, engine: Engine, count: int, cancel_first_after: int | None) -> dict[str, Any]:
        ids = [engine.encode_chat([{"role": "user", "content": f"{i} {PROMPT}"}], self.new_tokens * 2)
               for i in range(count)]
        arrivals: list[list[float]] = [[] for _ in range(count)]
        freed: dict[str, float] = {}
        scheduler = engine.batcher.manager().batch_processor.scheduler

        def run(i: int) -> None:
            stats = GenerationStats()
            stream = engine.batcher.stream(ids[i], self.new_tokens * 2, 0.0, 1.0)
            for tokens in stream:
                arrivals[i].extend([time.perf_counter()] * len(tokens))
                stats.completion_tokens += len(tokens)
                if i == 0 and cancel_first_after is not None and stats.completion_tokens >= cancel_first_after:
                    before = len(scheduler.active_requests) + len(scheduler.waiting_requests)
                    freed["cancelled_at"] = time.perf_counter()
                    stream.close()
                    while len(scheduler.active_requests) + len(scheduler.waiting_requests) >= before:
                        time.sleep(0.0005)
                    freed["freed_at"] = time.perf_counter()
                    return

        threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        gaps = [b - a for times in arrivals[1:] for a, b in zip(times, times[1:], strict=False)]
        result = {"itl_ms_p50": median(gaps) * 1000, "step_ms": median(gaps) * 1000}
        if freed:
            result["freed_after_ms"] = (freed["freed_at"] - freed["cancelled_at"]) * 1000
        return result

    def bench_cancel(self, engine: Engine, count: int) -> dict[str, Any]:
        baseline = self._streams(engine, count, None)
        cancelled = self._streams(engine, count, cancel_first_after=self.new_tokens // 4)
        steps = cancelled["freed_after_ms"] / baseline["step_ms"]
        return {"streams": count, "freed_after_ms": round(cancelled["freed_after_ms"], 1),
                "step_ms": round(baseline["step_ms"], 1), "freed_after_steps": round(steps, 2),
                "others_itl_ms_p50_without_cancel": round(baseline["itl_ms_p50"], 1),
                "others_itl_ms_p50_with_cancel": round(cancelled["itl_ms_p50"], 1),
                "others_itl_ratio": round(cancelled["itl_ms_p50"] / baseline["itl_ms_p50"], 3),
                "target": "freed within 1 step; others' ITL ratio <= 1.10"}

    # 4. the whole stack vs the engine alone -----------------------------------------------------------
    def bench_stack(self, engine: Engine, concurrency: int) -> dict[str, Any]:
        alone = engine_bench(engine, 3, self.new_tokens)
        ids = engine.encode_chat([{"role": "user", "content": PROMPT}], self.new_tokens)
        together = engine_concurrent(engine, ids, self.new_tokens, concurrency)
        entry = {"name": self.spec.name, "path": self.spec.path, "max_context": self.spec.max_context,
                 "max_new_tokens": self.new_tokens, "temperature": 0, "queue": f"bench.{uuid.uuid4().hex[:8]}"}
        stack = socket_bench(entry, 3, concurrency)
        added = stack["ttft_ms_p50"] - alone["ttft_ms_p50"]
        engine_rate, stack_rate = together["aggregate_tokens_per_s"], stack["concurrent_aggregate_tokens_per_s"]
        return {"streams": concurrency, "engine_aggregate_tokens_per_s": round(engine_rate, 1),
                "stack_aggregate_tokens_per_s": stack_rate, "aggregate_ratio": round(stack_rate / engine_rate, 3),
                "engine_ttft_ms": alone["ttft_ms_p50"], "stack_ttft_ms": stack["ttft_ms_p50"],
                "added_ttft_ms": round(added, 1),
                "target": "ratio >= 0.9; added TTFT <= max(15 ms, 10 %)"}

    # 3. weight footprint and speed by quantization -------------------------------------------------------
    def bench_quantization(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for quantization in ("none", "8bit", "4bit"):
            # The footprint targets compare against bf16 weights, so "none" is loaded in bf16 here.
            spec = dataclasses.replace(self.spec, quantization=quantization, dtype="bfloat16")
            loaded = load_model(spec)
            engine = Engine(loaded, spec, self.batch)
            try:
                ids = engine.encode_chat([{"role": "user", "content": PROMPT}], self.new_tokens)
                engine_concurrent(engine, ids, 4, 1)  # warm-up
                rate = engine_concurrent(engine, ids, self.new_tokens, 1)["aggregate_tokens_per_s"]
            finally:
                engine.batcher.stop()
            out[quantization] = {"weights_mib": round(loaded.model.get_memory_footprint() / 2**20, 1),
                                 "tokens_per_s": round(rate, 1)}
            del loaded, engine
        for q in ("8bit", "4bit"):
            out[q]["footprint_ratio"] = round(out[q]["weights_mib"] / out["none"]["weights_mib"], 3)
        out["target"] = "int8 <= 0.55x, nf4 <= 0.35x of bf16"
        return out

    def print_table(self, r: dict[str, Any]) -> None:
        rows = [(f"aggregate tok/s at {n} streams (x one)", f"{v} ({r['batching']['ratio_to_one_stream'][n]}x)")
                for n, v in r["batching"]["aggregate_tokens_per_s"].items()]
        kv = r["kv_reuse"]
        rows.append((f"turn-2 TTFT, {kv['history_tokens']}-token history: reuse / recompute",
                     f"{kv['ttft_ms_reuse']} / {kv['ttft_ms_recompute']} ms ({kv['ratio']}x)"))
        for q in ("none", "8bit", "4bit"):
            qr = r["quantization"][q]
            label = "bf16" if q == "none" else q
            rows.append((f"weights {label}", f"{qr['weights_mib']} MiB {qr.get('footprint_ratio', 1.0)}x, "
                                             f"{qr['tokens_per_s']} tok/s"))
        if "stack" in r:
            st = r["stack"]
            rows.append((f"stack vs engine, {st['streams']} streams aggregate",
                         f"{st['stack_aggregate_tokens_per_s']} / {st['engine_aggregate_tokens_per_s']} tok/s "
                         f"({st['aggregate_ratio']}x)"))
            rows.append(("stack vs engine, time to first token",
                         f"{st['stack_ttft_ms']} / {st['engine_ttft_ms']} ms (+{st['added_ttft_ms']} ms)"))
        c = r["cancel"]
        rows.append((f"cancel 1 of {c['streams']}: slot freed after",
                     f"{c['freed_after_ms']} ms = {c['freed_after_steps']} steps of {c['step_ms']} ms"))
        rows.append(("cancel: others' inter-token latency", f"{c['others_itl_ms_p50_with_cancel']} vs "
                     f"{c['others_itl_ms_p50_without_cancel']} ms ({c['others_itl_ratio']}x)"))
        self.stdout.write(f"\n{r['model']} ({r['params_millions']}M parameters), {r['new_tokens']} new tokens\n")
        for label, value in rows:
            self.stdout.write(f"  {label:58} {value}")
        self.stdout.write("")
