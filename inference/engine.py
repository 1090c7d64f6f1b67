"""The generation engine: chat template → token ids → a sampled, streamed answer.

It knows token ids and text, not Django rows. One Engine wraps one loaded model and may be
used from many worker threads at once (each call keeps its own KV cache).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from inference import metrics
from inference.batching import GREEDY_TEMPERATURE, BatchConfig, BatchRequest, BatchRunner
from inference.detokenizer import IncrementalDetokenizer
from inference.errors import PromptTooLong  # noqa: F401 (callers catch it from here)
from inference.loading import LoadedModel
from inference.registry import ModelSpec
from inference.turns import TurnCache, fit_newest_turns
from inference.vision import encode_with_images

log = logging.getLogger(__name__)

THINK_END = "</think>"


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the answer ends before the first of these strings


@dataclass
class Delta:
    content: str = ""
    reasoning: str = ""


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""  # "stop" | "length"
    generated_ids: list[int] = field(default_factory=list)
    stopped_by_string: bool = False  # the text was cut before the ids ended


class StopMatcher:
    """Cuts the text at the first stop string, holding back text that may be one's beginning."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.hit = False
        self._held = ""

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        text = self._held + text
        self._held = ""
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            return text[:cut], True
        if not final:
            keep = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
            if keep:
                self._held, text = text[-keep:], text[:-keep]
        return text, False


class ReasoningSplitter:
    """Routes generated text before `</think>` to reasoning and the rest to content."""

    def __init__(self, thinking: bool) -> None:
        self.thinking = thinking
        self._held = ""  # a possible start of "</think>" split across deltas
        self._answer_started = not thinking  # newlines right after </think> are not the answer

    def _content(self, text: str) -> str:
        if not self._answer_started:
            text = text.lstrip("\n")
            self._answer_started = bool(text)
        return text

    def split(self, text: str) -> Delta:
        if not self.thinking:
            return Delta(content=self._content(text))
        text = self._held + text
        self._held = ""
        if THINK_END in text:
            reasoning, content = text.split(THINK_END, 1)
            self.thinking = False
            return Delta(content=self._content(content), reasoning=reasoning)
        for cut in range(len(THINK_END) - 1, 0, -1):
            if text.endswith(THINK_END[:cut]):
                self._held, text = text[-cut:], text[:-cut]
                break
        return Delta(reasoning=text)

    def flush(self) -> Delta:
        held, self._held = self._held, ""
        return Delta(reasoning=held) if self.thinking else Delta(content=self._content(held))


class Engine:
    def __init__(self, loaded: LoadedModel, spec: ModelSpec | None = None, batching: BatchConfig | None = None,
                 max_sequences: int | None = None, solo_sequences: int | None = None) -> None:
        self.spec = spec or loaded.spec
        self.tokenizer = loaded.tokenizer
        self.processor = loaded.processor  # vision models: renders image parts and pixel values
        self.model = loaded.model
        self.device = loaded.device
        eos = loaded.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos_ids)
        self.batcher = BatchRunner(loaded, self.eos_ids, batching) if batching is not None else None
        self.turns = TurnCache()
        # Admission by capacity: answers beyond these wait here, in arrival order, for a place to free.
        self._batch_slots = threading.BoundedSemaphore(max_sequences) if max_sequences else None
        self._solo_slots = threading.BoundedSemaphore(solo_sequences) if solo_sequences else None

    # -- prompt ---------------------------------------------------------------------------
    def _render_text(self, history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            history, tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=self.spec.reasoning
        )

    def _render(self, history: list[dict[str, str]]) -> list[int]:
        return self.tokenizer(self._render_text(history), add_special_tokens=False)["input_ids"]

    def encode_chat(
        self, history: list[dict[str, str]], max_new_tokens: int, conversation: str | None = None
    ) -> list[int]:
        """Token ids for the conversation, dropping the oldest turns until the answer fits.

        With `conversation`, the last turn's stored ids are extended when they encode exactly
        the history before the new message (reasoning models re-render: earlier thinking must
        not be fed back, and the template drops it)."""
        budget = self.spec.max_context - max_new_tokens
        if self.processor is not None:
            return encode_with_images(self.processor, history, budget, self.spec.reasoning)
        if conversation is not None and not self.spec.reasoning and history and history[-1]["role"] == "user":
            turn = self.turns.get(conversation, history[:-1])
            suffix = self._new_turn_ids(history) if turn is not None else None
            if turn is not None and suffix is not None and len(turn.ids) + len(suffix) <= budget:
                return list(turn.ids) + suffix
        return self._encode_fitting(history, budget, max_new_tokens)

    def _new_turn_ids(self, history: list[dict[str, str]]) -> list[int] | None:
        """Ids of what the template adds for the newest message (None if it is not a pure suffix)."""
        before = self._render_text(history[:-1], add_generation_prompt=False)
        after = self._render_text(history, add_generation_prompt=True)
        if not after.startswith(before):
            return None
        return self.tokenizer(after[len(before) :], add_special_tokens=False)["input_ids"]

    def remember_turn(
        self, conversation: str, history: list[dict[str, str]], answer: str, prompt_ids: list[int],
        stats: GenerationStats,
    ) -> None:
        """Keep this turn's ids (prompt + answer + the template's closing) for the next turn."""
        if self.spec.reasoning or not answer or stats.stopped_by_string:
            return
        full = history + [{"role": "assistant", "content": answer}]
        rendered = self._render_text(full, add_generation_prompt=False)
        at = rendered.rfind(answer)
        if at < 0:
            return
        answer_ids = [t for t in stats.generated_ids if t not in self.eos_ids]
        closing = self.tokenizer(rendered[at + len(answer) :], add_special_tokens=False)["input_ids"]
        self.turns.put(conversation, full, prompt_ids + answer_ids + closing)

    def _encode_fitting(self, history: list[dict[str, str]], budget: int, max_new_tokens: int) -> list[int]:
        return fit_newest_turns(
            history, budget, self._render,
            f"The message does not fit the model's context of {self.spec.max_context} tokens "
            f"with room for a {max_new_tokens}-token answer.",
        )

    # -- generation -----------------------------------------------------------------------
    def _sample(self, logits: Any, params: SamplingParams, generator: Any) -> int:
        import torch

        if params.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > params.top_p
            sorted_probs[outside] = 0.0
            choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=generator))

    def _solo_tokens(
        self, prompt_ids: list[int], max_new: int, params: SamplingParams, model_inputs: dict[str, Any] | None = None
    ) -> Iterator[list[int]]:
        """One request on its own, with its own KV cache and random generator (seeded requests, and
        prompts with images, whose pixel values go into the first forward pass only)."""
        import torch
        from transformers import DynamicCache

        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        cache = DynamicCache(config=self.model.config)
        # The first step feeds the whole prompt; every later step one token, reusing the cache.
        step_input = torch.tensor([prompt_ids], device=self.device)
        extra = {k: v.to(self.device) for k, v in (model_inputs or {}).items()}
        with torch.inference_mode():
            for _ in range(max_new):
                logits = self.model(input_ids=step_input, cache=cache, use_cache=True, **extra).logits[0, -1, :].float()
                extra = {}
                token = self._sample(logits, params, generator)
                yield [token]
                step_input = torch.tensor([[token]], device=self.device)

    def _prepare(self, prompt_ids: list[int], params: SamplingParams,
                 stats: GenerationStats) -> tuple[SamplingParams, int]:
        if 0 < params.temperature < GREEDY_TEMPERATURE:
            params = replace(params, temperature=0.0)  # logits / 1e-300 overflow to inf: sample greedily
        stats.prompt_tokens = len(prompt_ids)
        metrics.record_prompt(self.spec.name, len(prompt_ids))  # with the reused count: the KV hit ratio
        return params, max(0, min(params.max_new_tokens, self.spec.max_context - len(prompt_ids)))

    def open(self, prompt_ids: list[int], params: SamplingParams, stats: GenerationStats,
             wake: Callable[[], None] | None = None) -> Generation | None:
        """Start a generation in the shared batch and return it, to be read without blocking (`poll()`);
        None when this request cannot join the batch (no batching, a seed, images): use `generate`.
        `wake` is called from the batch's thread when the first tokens are ready."""
        if self.batcher is None or params.seed is not None or getattr(prompt_ids, "model_inputs", None):
            return None
        params, max_new = self._prepare(prompt_ids, params, stats)
        log.debug("generation started: %d prompt tokens, at most %d new, batched", len(prompt_ids), max_new)
        if max_new == 0:
            return Generation(None, TextDecoder(self, params, stats, max_new))
        slot = _acquire(self._batch_slots)
        try:
            request = self.batcher.submit(prompt_ids, max_new, params.temperature, params.top_p, wake)
        except BaseException:
            slot()
            raise
        return Generation(request, TextDecoder(self, params, stats, max_new), slot)

    def generate(self, prompt_ids: list[int], params: SamplingParams, stats: GenerationStats) -> Iterator[Delta]:
        """Yield text deltas as tokens are produced; `stats` is filled in as it goes.

        Requests go through the shared batch unless they carry a seed (a shared sampler cannot
        honour per-request seeds). The caller stops generation by closing the iterator.
        """
        params, max_new = self._prepare(prompt_ids, params, stats)
        model_inputs = getattr(prompt_ids, "model_inputs", None)
        batched = self.batcher is not None and params.seed is None and not model_inputs
        # These lines run in the caller's (the Celery task's) thread, also when batching: the log
        # filter stamps them with that task's request id. The batch's own thread logs no request.
        log.debug("generation started: %d prompt tokens, at most %d new, %s", len(prompt_ids), max_new,
                  "batched" if batched else "solo")
        started = time.monotonic()
        free = _acquire(self._batch_slots if batched else self._solo_slots)
        if batched:
            tokens = self.batcher.stream(prompt_ids, max_new, params.temperature, params.top_p)
        else:
            tokens = self._solo_tokens(list(prompt_ids), max_new, params, model_inputs)
        decoder = TextDecoder(self, params, stats, max_new)
        try:
            for chunk in tokens:
                yield from decoder.feed(chunk)
                if decoder.ended:
                    break
        except GeneratorExit:  # the caller closed us: Stop, a moderation cut, or nobody watching
            log.debug("generation cancelled after %d tokens in %.2f s", stats.completion_tokens,
                      time.monotonic() - started)
            raise
        finally:
            tokens.close()  # cancels the request in the batch if it is still running
            free()
        yield from decoder.finish()
        log.debug("generation finished (%s): %d prompt + %d new tokens in %.2f s", stats.finish_reason,
                  stats.prompt_tokens, stats.completion_tokens, time.monotonic() - started)


class TextDecoder:
    """Token ids → text deltas for one generation: end of sequence, stop strings, reasoning split, and
    the counts in `stats`."""

    def __init__(self, engine: Engine, params: SamplingParams, stats: GenerationStats, max_new: int) -> None:
        self.eos_ids = engine.eos_ids
        self.stats = stats
        self.max_new = max_new
        self.detokenizer = IncrementalDetokenizer(engine.tokenizer)
        self.splitter = ReasoningSplitter(engine.spec.reasoning)
        self.stops = StopMatcher(params.stop)
        stats.finish_reason = "length"
        self.ended = max_new <= 0  # the sequence is over: nothing more to feed

    def feed(self, tokens: list[int]) -> list[Delta]:
        deltas: list[Delta] = []
        stats = self.stats
        for token in tokens:
            if self.ended:
                break
            stats.completion_tokens += 1
            stats.generated_ids.append(token)
            if token in self.eos_ids:
                stats.finish_reason, self.ended = "stop", True
                break
            text, hit = self.stops.feed(self.detokenizer.push(token))
            delta = self.splitter.split(text) if text else None
            if delta and (delta.content or delta.reasoning):
                deltas.append(delta)
            if hit:
                stats.finish_reason, self.ended = "stop", True
                stats.stopped_by_string = True
                break
            if stats.completion_tokens >= self.max_new:
                self.ended = True
        return deltas

    def finish(self) -> list[Delta]:
        """Text held back for a possible multi-byte character or stop string, at the natural end."""
        if self.stops.hit:
            return []
        tail, _ = self.stops.feed(self.detokenizer.flush(), final=True)
        return [d for d in (self.splitter.split(tail) if tail else Delta(), self.splitter.flush())
                if d.content or d.reasoning]


class Generation:
    """A generation in the shared batch, read without blocking: each `poll()` returns the text since the
    last one and whether the answer has ended. `close()` (always) leaves the batch if it is still running."""

    def __init__(self, request: BatchRequest | None, decoder: TextDecoder,
                 free: Callable[[], None] | None = None) -> None:
        self.request = request
        self.decoder = decoder
        self.ended = False
        self._free = free
        self.started = time.monotonic()

    def poll(self) -> list[Delta]:
        if self.ended:
            return []
        deltas: list[Delta] = []
        if self.request is not None and not self.decoder.ended:
            deltas = self.decoder.feed(self.request.take())
            if self.request.finished:
                self.decoder.ended = True  # also when the batch stopped it (its length limit)
        if self.decoder.ended:
            self.ended = True
            self.close()
            deltas += self.decoder.finish()
        return deltas

    def report(self) -> None:
        """The generation's last log line; from the answer's own thread, so it carries its request id."""
        stats, took = self.decoder.stats, time.monotonic() - self.started
        if self.ended:
            log.debug("generation finished (%s): %d prompt + %d new tokens in %.2f s", stats.finish_reason,
                      stats.prompt_tokens, stats.completion_tokens, took)
        else:
            log.debug("generation cancelled after %d tokens in %.2f s", stats.completion_tokens, took)

    def close(self) -> None:
        if self.request is not None:
            self.request.close()
        free, self._free = self._free, None
        if free is not None:
            free()  # its place in the batch goes to the next answer waiting


def _acquire(slots: threading.BoundedSemaphore | None) -> Callable[[], None]:
    """Wait for a place; returns the function that gives it back (once)."""
    if slots is None:
        return lambda: None
    slots.acquire()
    given_back = threading.Event()

    def free() -> None:
        if not given_back.is_set():
            given_back.set()
            slots.release()

    return free
