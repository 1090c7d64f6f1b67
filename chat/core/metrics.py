"""This process's Prometheus metrics: one registry, the metric families, and recorders that never raise.

Every process (web or worker) records here, in memory; `chat.core.metrics_snapshots` copies the
values to Redis so the web's /metrics shows all processes. A recorder that fails logs at DEBUG and
gives up: metrics must never break an answer.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

# A registry of our own rather than the global one: its process and GC collectors describe one
# process, and these values are shown side by side with other processes' (a `process` label each).
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_GAP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)

TIME_TO_FIRST_TOKEN = Histogram(
    "deepseek_time_to_first_token_seconds", "From a worker claiming an answer to its first text.",
    ["model"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
INTER_TOKEN_LATENCY = Histogram(
    "deepseek_inter_token_latency_seconds",
    "Time per token between an answer's deltas (one observation per delta: its gap divided by its tokens).",
    ["model"], buckets=_TOKEN_GAP_BUCKETS, registry=REGISTRY,
)
GENERATED_TOKENS = Counter(
    "deepseek_generated_tokens", "Completion tokens of finished answers.", ["model"], registry=REGISTRY,
)
ACTIVE_STREAMS = Gauge(
    "deepseek_active_streams", "Answers being written now.", ["model"], registry=REGISTRY,
)
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
MODERATION_BLOCKS = Counter(
    "deepseek_moderation_blocks", "Prompts refused (input) and answers cut (output) by moderation.",
    ["direction"], registry=REGISTRY,
)
AUDIT_WRITE_FAILURES = Counter(
    "deepseek_audit_write_failures", "Audit events that could not be written.", registry=REGISTRY,
)


def _share() -> None:
    """Start this process's pusher on its first metric, so any web process's /metrics sees it."""
    try:
        from chat.core.metrics_snapshots import ensure_pushing

        ensure_pushing()
    except Exception:
        log.debug("could not start the metrics pusher", exc_info=True)


class StreamMetrics:
    """One answer's metrics, recorded by the worker writing it: created when it is claimed, told of
    each delta, then of the end. Label lookups happen once here, so a delta costs ~1 µs."""

    def __init__(self, model: str, claimed_at: float) -> None:
        self._claimed_at = claimed_at
        self._last_at: float | None = None
        self._last_tokens = 0
        self._open = self._counted = False
        try:
            self._ttft = TIME_TO_FIRST_TOKEN.labels(model)
            self._gap = INTER_TOKEN_LATENCY.labels(model)
            self._tokens = GENERATED_TOKENS.labels(model)
            self._active = ACTIVE_STREAMS.labels(model)
            self._active.inc()
            self._open = True
            _share()
        except Exception:
            log.debug("answer metrics unavailable", exc_info=True)

    def delta(self, completion_tokens: int) -> None:
        """Text arrived: the first is the time to first token, later ones time the gap per token."""
        if not self._open:
            return
        try:
            now = time.monotonic()
            if self._last_at is None:
                self._ttft.observe(now - self._claimed_at)
            else:
                # A delta may carry several tokens (text held back for a multi-byte character).
                self._gap.observe((now - self._last_at) / max(1, completion_tokens - self._last_tokens))
            self._last_at, self._last_tokens = now, completion_tokens
        except Exception:
            log.debug("delta metrics failed", exc_info=True)

    def finished(self, completion_tokens: int) -> None:
        """Count the answer's tokens once, whatever its end."""
        if not self._open or self._counted:
            return
        self._counted = True
        try:
            if completion_tokens > 0:
                self._tokens.inc(completion_tokens)
        except Exception:
            log.debug("token count failed", exc_info=True)

    def closed(self) -> None:
        """The answer is no longer being written (always called, once or more)."""
        if not self._open:
            return
        self._open = False
        try:
            self._active.dec()
        except Exception:
            log.debug("active stream count failed", exc_info=True)


def moderation_blocked(direction: str) -> None:
    """A prompt was refused ("input") or an answer cut ("output")."""
    try:
        MODERATION_BLOCKS.labels(direction).inc()
        _share()
    except Exception:
        log.debug("moderation metric failed", exc_info=True)


def audit_write_failed() -> None:
    try:
        AUDIT_WRITE_FAILURES.inc()
        _share()
    except Exception:
        log.debug("audit metric failed", exc_info=True)


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
