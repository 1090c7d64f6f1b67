"""The engine's Prometheus metrics: batch size per forward pass and prompt tokens (computed and reused).

A registry of the engine's own; the process that runs the engine adds it to its registry
(chat.worker.apps does: `REGISTRY.register(inference.metrics.REGISTRY)`). Recorders never raise:
metrics must never break an answer.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

ENGINE_BATCH_SIZE = Histogram(
    "deepseek_engine_batch_size", "Requests in one forward pass of the continuous-batching engine.",
    ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY,
)
PROMPT_TOKENS = Counter(
    "deepseek_prompt_tokens", "Prompt tokens of answers given to the engine.", ["model"], registry=REGISTRY,
)
PROMPT_TOKENS_REUSED = Counter(
    "deepseek_prompt_tokens_reused",
    "Prompt tokens whose KV state came from the paged cache (earlier turns) instead of being computed.",
    ["model"], registry=REGISTRY,
)


def record_prompt(model: str, tokens: int) -> None:
    """A prompt of `tokens` tokens went to the engine (the reused part is counted by `watch_batching`)."""
    try:
        PROMPT_TOKENS.labels(model).inc(tokens)
    except Exception:
        log.debug("prompt metric failed", exc_info=True)


def watch_batching(manager: Any, model: str, wait: float = 10.0) -> None:
    """Record each forward pass's batch size and each prefix-cache match of a just-started
    ContinuousBatchingManager, by wrapping two methods of its batch processor (this instance only).

    transformers reports neither, and both run on its loop thread: the wrappers call the original
    first and swallow their own errors. If a transformers release renames either, nothing is
    wrapped (one WARNING) and generation goes on; tests/test_metrics.py notices.

    The loop thread builds the processor: wait for it (no request is queued yet, so no forward
    pass is missed)."""
    deadline = time.monotonic() + wait
    processor = getattr(manager, "batch_processor", None)
    while processor is None and time.monotonic() < deadline and manager.is_running():
        time.sleep(0.002)
        processor = getattr(manager, "batch_processor", None)
    if processor is None or getattr(processor, "_deepseek_watched", False):
        if processor is None:
            log.warning("batching metrics unavailable for %s (no batch processor)", model)
        return
    processor._deepseek_watched = True
    try:
        scheduler, cache = processor.scheduler, processor.cache
        schedule_batch, search_prefix_match = scheduler.schedule_batch, cache.search_prefix_match
        batch_size, reused = ENGINE_BATCH_SIZE.labels(model), PROMPT_TOKENS_REUSED.labels(model)
    except Exception:
        log.warning("batching metrics unavailable for %s (transformers internals changed)", model, exc_info=True)
        return

    def schedule_and_count(*args: Any, **kwargs: Any) -> Any:
        scheduled = schedule_batch(*args, **kwargs)
        try:
            if scheduled[0]:  # None (cache full, retried) or [] (nothing to do) is not a forward pass
                batch_size.observe(len(scheduled[0]))
        except Exception:
            pass
        return scheduled

    def match_and_count(*args: Any, **kwargs: Any) -> Any:
        matched = search_prefix_match(*args, **kwargs)
        try:
            if matched > 0:
                reused.inc(matched)
        except Exception:
            pass
        return matched

    scheduler.schedule_batch = schedule_and_count
    cache.search_prefix_match = match_and_count
