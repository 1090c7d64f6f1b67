"""A check the web tier makes before saving a message: does it fit the model's context at all?

Needs only the tokenizer (small, loaded once per process), never the weights.
"""
from __future__ import annotations

import logging
import threading
from functools import lru_cache
from typing import Any

from inference.registry import ModelSpec

log = logging.getLogger(__name__)


_loading = threading.Lock()


def _tokenizer(path: str) -> Any:
    # One loader at a time: transformers' lazy first import is not thread-safe (concurrent first
    # requests got "cannot import name 'AutoTokenizer'" under load), and one load per path is enough.
    with _loading:
        return _load_tokenizer(path)


@lru_cache(maxsize=16)
def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # the worker reports an unloadable model with the full reason
        log.warning("cannot load the tokenizer of %s to check message sizes: %s", path, str(exc).splitlines()[0])
        return None


def message_tokens(spec: ModelSpec, content: str, system_prompt: str = "") -> int | None:
    """Tokens the message takes as a single-turn prompt (after the system prompt, if any);
    None when the tokenizer is unavailable, or when an upstream server serves the model (it has
    no tokenizer here and enforces its own context limit)."""
    if spec.upstream:
        return None
    tokenizer = _tokenizer(spec.path)
    if tokenizer is None:
        return None
    turn = [{"role": "system", "content": system_prompt}] if system_prompt else []
    turn.append({"role": "user", "content": content})
    text = tokenizer.apply_chat_template(turn, tokenize=False,
                                         add_generation_prompt=True, enable_thinking=spec.reasoning)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def room_for_prompt(spec: ModelSpec) -> int:
    return spec.max_context - spec.max_new_tokens


def chat_tokens(spec: ModelSpec, history: list[dict[str, str]]) -> int | None:
    """Tokens a whole conversation takes as a prompt (the /v1 API checks it fits before queueing);
    None when the tokenizer is unavailable (or the model is served by an upstream server)."""
    if spec.upstream:
        return None
    tokenizer = _tokenizer(spec.path)
    if tokenizer is None:
        return None
    text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=spec.reasoning)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
