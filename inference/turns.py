"""Conversation turns for the engine: the oldest dropped until a prompt fits the context, and
per-conversation token ids of the last turn, so the next turn extends them instead of re-rendering
the template over the history (which would not reproduce the ids the model saw).

Only ids live here; their KV state lives in the batching engine's paged cache, which shares
blocks by content, so a prompt that starts with these ids skips recomputing them.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

from inference.errors import PromptTooLong

Prompt = TypeVar("Prompt", bound=Sized)


def fit_newest_turns(history: list[dict[str, Any]], budget: int, encode: Callable[[list[dict[str, Any]]], Prompt],
                     too_long: str) -> Prompt:
    """`encode(messages)` for the system messages plus as many of the newest turns as fit `budget`
    tokens (its result's length): the oldest turn goes first, and the kept turns never start with an
    assistant's. PromptTooLong(too_long) when even the newest message alone does not fit."""
    system = [m for m in history if m["role"] == "system"]
    turns = [m for m in history if m["role"] != "system"]
    while turns:
        prompt = encode(system + turns)
        if len(prompt) <= budget:
            return prompt
        turns = turns[1:]
        while turns and turns[0]["role"] == "assistant":
            turns = turns[1:]
    raise PromptTooLong(too_long)


def fingerprint(history: list[dict[str, str]]) -> str:
    """Identifies a history by its roles and texts (as saved), independent of tokenization."""
    canonical = json.dumps([[m["role"], m["content"]] for m in history], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Turn:
    history: str  # fingerprint of the history these ids encode, the answer included
    ids: tuple[int, ...]


class TurnCache:
    """LRU map of conversation → last turn's ids, bounded by a total token budget."""

    def __init__(self, max_tokens: int = 4_000_000) -> None:
        self.max_tokens = max_tokens
        self._turns: OrderedDict[str, Turn] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str, history: list[dict[str, str]]) -> Turn | None:
        """The stored turn when it encodes exactly `history`; counts a hit or a miss."""
        with self._lock:
            turn = self._turns.get(key)
            if turn is None or turn.history != fingerprint(history):
                self.misses += 1
                return None
            self._turns.move_to_end(key)
            self.hits += 1
            return turn

    def put(self, key: str, history: list[dict[str, str]], ids: list[int]) -> None:
        with self._lock:
            old = self._turns.pop(key, None)
            if old is not None:
                self._tokens -= len(old.ids)
            if len(ids) > self.max_tokens:
                return
            self._turns[key] = Turn(fingerprint(history), tuple(ids))
            self._tokens += len(ids)
            while self._tokens > self.max_tokens:
                _, evicted = self._turns.popitem(last=False)
                self._tokens -= len(evicted.ids)

    def __len__(self) -> int:
        return len(self._turns)
