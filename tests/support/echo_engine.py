"""A test engine that answers with the user's last message, streamed a few characters at a time.

It stands in for the model where a test needs to know the answer's text: rendering, XSS in model
output, and reasoning ("think: R || A" streams R as reasoning, then A as the answer).
"""
from __future__ import annotations

import time
from collections.abc import Iterator

from inference.engine import Delta, GenerationStats, SamplingParams


class Prompt(list):
    """Token ids (here: one per character) that remember the text they came from."""

    text: str = ""


class EchoEngine:
    batcher = None

    def __init__(self, chunk: int = 4, pause: float = 0.01) -> None:
        self.chunk, self.pause = chunk, pause

    def encode_chat(self, history, max_new_tokens, conversation=None) -> Prompt:
        prompt = Prompt(range(sum(len(m["content"]) for m in history)))
        prompt.text = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
        return prompt

    def open(self, prompt_ids, params, stats, wake=None) -> None:
        return None  # no shared batch: the answer's thread relays `generate`

    def remember_turn(self, *args, **kwargs) -> None:
        pass

    def generate(self, prompt_ids: Prompt, params: SamplingParams, stats: GenerationStats) -> Iterator[Delta]:
        stats.prompt_tokens = len(prompt_ids)
        reasoning, content = "", prompt_ids.text
        if content.startswith("think:") and "||" in content:
            reasoning, content = (part.strip() for part in content[len("think:"):].split("||", 1))
        stats.finish_reason = "stop"
        for field, text in (("reasoning", reasoning), ("content", content)):
            for start in range(0, len(text), self.chunk):
                if stats.completion_tokens >= params.max_new_tokens:  # one chunk stands for one token
                    stats.finish_reason = "length"
                    return
                time.sleep(self.pause)
                stats.completion_tokens += 1
                yield Delta(**{field: text[start:start + self.chunk]})
