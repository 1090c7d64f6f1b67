"""Incremental detokenization: turn a growing list of token ids into text deltas.

Decoding token by token breaks multi-byte characters and merges; this keeps a small window
(the technique used by TGI and vLLM) and only emits text once it is complete.
"""
from __future__ import annotations

from typing import Any

# A UTF-8 character is at most 4 bytes: text held back longer than this is not a character in
# the making but invalid bytes (a random or broken model), and is released as U+FFFD.
MAX_HELD_TOKENS = 4
# A model can emit a NUL byte; no database text column takes it (PostgreSQL refuses it outright).
NUL = "\x00"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        text = self._decode(self.ids[self._prefix_offset :])
        held_too_long = len(self.ids) - self._read_offset >= MAX_HELD_TOKENS
        if len(text) > len(prefix) and (held_too_long or not text.endswith("\ufffd")):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            return text[len(prefix) :].replace(NUL, "\ufffd")
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end (e.g. a truncated multi-byte character)."""
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        text = self._decode(self.ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self.ids)
        return text[len(prefix) :].replace(NUL, "\ufffd") if len(text) > len(prefix) else ""
