"""This process's answer metrics (the registry is chat.core.metrics_registry), and recorders that never raise.

Every process (web or worker) records here, in memory; `chat.core.metrics_snapshots` copies the
values to Redis so the web's /metrics shows all processes. A recorder that fails logs at DEBUG and
gives up: metrics must never break an answer.
"""
from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge, Histogram

from chat.core.metrics_registry import REGISTRY
from chat.core.metrics_snapshots import ensure_pushing

log = logging.getLogger(__name__)


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
