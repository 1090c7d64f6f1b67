"""The benchmark commands run end to end in their quick modes (figures checked for sense, not targets)."""
import json
from io import StringIO

import pytest
from django.core.management import call_command

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def run(*args) -> dict:
    out = StringIO()
    call_command(*args, stdout=out)
    text = out.getvalue()
    return json.loads(text[text.index("\n{") :])


def test_bench_inference_quick_reports_every_figure(broker):
    figures = run("bench_inference", "--quick")
    assert figures["batching"]["aggregate_tokens_per_s"]["2"] > 0
    assert figures["batching"]["ratio_to_one_stream"]["1"] == 1.0
    assert 0 < figures["kv_reuse"]["ttft_ms_reuse"] and 0 < figures["kv_reuse"]["ttft_ms_recompute"]
    quantized = figures["quantization"]
    assert quantized["8bit"]["footprint_ratio"] < 1 and quantized["4bit"]["tokens_per_s"] > 0
    assert figures["stack"]["stack_aggregate_tokens_per_s"] > 0 and figures["stack"]["stack_ttft_ms"] > 0
    assert figures["cancel"]["freed_after_ms"] >= 0


def test_bench_stream_reports_engine_socket_and_api_figures(broker):
    figures = run("bench_stream", "--runs", "1", "--tokens", "8", "--levels", "1,2")
    for path in ("engine", "socket", "api"):
        assert figures[path]["single"]["ttft_ms_p50"] > 0
        for level in ("1", "2"):
            assert figures[path][level]["streams"] == int(level)
            assert figures[path][level]["aggregate_tokens_per_s"] > 0
            assert figures[path][level]["ttft_ms_p99"] >= figures[path][level]["ttft_ms_p50"] > 0
    for path in ("socket", "api"):  # every answer's text arrived whole and once
        assert (figures[path]["2"]["lost"], figures[path]["2"]["repeated"]) == (0, 0)
        assert set(figures[path]["2"]["cpu_seconds"]) == {"worker", "web", "client"}
