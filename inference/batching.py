"""Continuous batching: concurrent generations share forward passes, joining and leaving the
batch at token boundaries, through transformers' own ContinuousBatchingManager.

Its paged KV cache also shares full blocks by content hash, also after a request ends: a later
request whose prompt starts with the same token ids (the next turn of a conversation) reuses
those blocks instead of recomputing them, until the block budget needs them back.
"""
from __future__ import annotations

import collections
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from inference import metrics
from inference.loading import LoadedModel

log = logging.getLogger(__name__)

# A temperature below this samples greedily, solo or batched: the engine's solo sampler takes the argmax
# instead (logits divided by a tinier one overflow), and the batch, whose shared sampler has no greedy
# mode, gets this one for a temperature of 0 (the softmax becomes one-hot on the argmax).
GREEDY_TEMPERATURE = 1e-4


class EngineCrashed(RuntimeError):
    """The batching loop stopped or failed; in-flight requests cannot finish."""


@dataclass(frozen=True)
class BatchConfig:
    page_size: int = 32  # tokens per KV block: the granularity of prefix reuse
    num_blocks: int = 2048  # KV budget in blocks (the whole cache, reused prefixes included)
    max_batch_tokens: int = 1024  # tokens per forward pass (prefill chunks + decodes)


class _DirectDispatch:
    """Stands in for the event loop the manager hands results to: calls the handler at once
    (it only puts the result on the request's own queue)."""

    @staticmethod
    def call_soon_threadsafe(callback: Any, *args: Any) -> None:
        callback(*args)


class BatchRequest:
    """One request in the batch, read without blocking: the batch's thread only appends its outputs
    (no thread is woken per token); `take()` returns the tokens since the last call. `wake` is called once,
    with the first output, so an answer's first text need not wait for the reader's next round."""

    def __init__(self, runner: BatchRunner, manager: Any, request_id: str, wake: Any = None,
                 wake_each: bool = False) -> None:
        self.runner, self.manager, self.request_id = runner, manager, request_id
        self._wake = wake
        self._wake_each = wake_each  # a blocking reader (`BatchRunner.stream`) is woken by every output
        self._outputs: collections.deque = collections.deque()  # appended by the batch's thread only
        self._started = False
        self._seen = 0
        self.finished = False
        self._closed = False

    def _handle(self, output: Any) -> None:  # on the batch's thread
        first = not self._started
        self._started = True
        self._outputs.append(output)
        if self._wake is not None and (first or self._wake_each):
            self._wake()

    def take(self) -> list[int]:
        """The new token ids since the last call (perhaps none); sets `finished` at the request's end."""
        new: list[int] = []
        while self._outputs and not self.finished:
            output = self._outputs.popleft()
            if output.error:
                if new:  # the tokens before the failure first; the failure at the next call
                    self._outputs.appendleft(output)
                    return new
                raise EngineCrashed(f"the batching loop failed: {output.error}")
            tokens = output.generated_tokens
            new.extend(tokens[self._seen:])
            self._seen = len(tokens)
            self.finished = output.is_finished()
        if not self.finished and not new and not self.manager.is_running():
            raise EngineCrashed("the batching loop stopped while answering")
        return new

    def close(self) -> None:
        """Leave the batch: cancelled at the next step if it is still running."""
        if self._closed:
            return
        self._closed = True
        router = self.manager.output_router
        with router._lock:
            router.result_handlers.pop(self.request_id, None)
        if not self.finished:
            self.manager.cancel_request(self.request_id)


class BatchRunner:
    """One ContinuousBatchingManager per loaded model; thread-safe `stream()` per request."""

    def __init__(self, loaded: LoadedModel, eos_ids: frozenset[int], config: BatchConfig | None = None) -> None:
        self.loaded = loaded
        self.eos_ids = eos_ids
        self.config = config or BatchConfig()
        self._lock = threading.Lock()
        self._manager: Any = None

    def _start(self) -> Any:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        spec = self.loaded.spec
        # Temperature and top_p must differ from their defaults here, or the manager builds no
        # per-request processors for them.
        generation = GenerationConfig(
            do_sample=True, temperature=0.7, top_p=0.95, max_new_tokens=spec.max_new_tokens,
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.loaded.tokenizer.pad_token_id,
        )
        manager = self.loaded.model.init_continuous_batching(
            generation_config=generation,
            continuous_batching_config=ContinuousBatchingConfig(
                page_size=self.config.page_size, num_blocks=self.config.num_blocks,
                max_batch_tokens=self.config.max_batch_tokens, allow_block_sharing=True,
                per_request_processors=True,
            ),
        )
        manager.start()
        metrics.watch_batching(manager, spec.name)  # batch size per forward pass, KV reused from the cache
        log.info("continuous batching started for %s (%d KV blocks of %d tokens)",
                 spec.name, self.config.num_blocks, self.config.page_size)
        return manager

    def manager(self) -> Any:
        """The running manager, (re)started when missing or crashed."""
        with self._lock:
            current = self._manager
            if current is not None and current.is_running():
                return current
            if current is not None:
                log.error("the batching loop for %s stopped; restarting it", self.loaded.spec.name)
                try:
                    current.stop(block=False)
                except Exception:
                    log.exception("stopping the crashed batching loop failed")
            self._manager = self._start()
            return self._manager

    def submit(self, prompt_ids: list[int], max_new_tokens: int, temperature: float, top_p: float,
               wake: Any = None, wake_each: bool = False) -> BatchRequest:
        """Add a request to the batch and return it, to be read with `take()` (no thread waits on it)."""
        manager = self.manager()
        request = BatchRequest(self, manager, uuid.uuid4().hex, wake, wake_each)
        router = manager.output_router
        with router._lock:  # registered before submitting, so no result goes to the shared queue
            router.result_handlers[request.request_id] = (request._handle, _DirectDispatch)
        added = manager.add_request(
            list(prompt_ids), request_id=request.request_id, max_new_tokens=max_new_tokens, streaming=True,
            eos_token_id=sorted(self.eos_ids),
            temperature=float(max(temperature, GREEDY_TEMPERATURE)), top_p=float(top_p),
        )
        if added is None:
            request.close()
            raise EngineCrashed("the batching engine is not accepting requests")
        return request

    def stream(
        self, prompt_ids: list[int], max_new_tokens: int, temperature: float, top_p: float
    ) -> Iterator[list[int]]:
        """Yield lists of new token ids as the batch produces them, blocking between them (the engine's
        `generate`; the tick writer reads `submit`'s requests without blocking). Closing the iterator early
        cancels the request in the engine, freeing its slot at the next step."""
        arrived = threading.Event()
        request = self.submit(prompt_ids, max_new_tokens, temperature, top_p, wake=arrived.set, wake_each=True)
        try:
            while not request.finished:
                if not arrived.wait(1.0):
                    if not request.manager.is_running():
                        raise EngineCrashed("the batching loop stopped while answering")
                    continue
                arrived.clear()  # outputs after this set it again; those before are taken now
                new = request.take()
                if new:
                    yield new
        finally:
            request.close()

    def stop(self, timeout: float | None = None) -> None:
        with self._lock:
            if self._manager is not None:
                self._manager.stop(block=True, timeout=timeout)
                self._manager = None
