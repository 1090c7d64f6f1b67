"""OutputWatch: moderates a model's answer delta by delta while it streams, re-scanning only a bounded window."""
from __future__ import annotations

import unicodedata

from chat.moderation.normalize import INVISIBLE, fold
from chat.moderation.rules import ALLOWED, WINDOW, RuleSet, Verdict

# A run of combining marks longer than this (only "zalgo" text has one) is normalized in pieces.
MAX_PENDING = 32


def _joins(left: str, right: str) -> bool:
    """Whether two adjacent characters may normalize differently together than apart (é from e + ◌́,
    Hangul syllables from jamo). Composition only ever pairs a starter with its immediate neighbour,
    so looking at pairs is enough."""
    if right < "\u0300":  # nothing below the combining diacritics composes with what precedes it
        return False
    if unicodedata.combining(right):
        return True
    return unicodedata.normalize("NFKC", left + right) != (
        unicodedata.normalize("NFKC", left) + unicodedata.normalize("NFKC", right)
    )


def _settle_point(raw: str) -> int:
    """How much of raw streamed text normalizes the same whatever comes next: all but the last character,
    less the characters the last one may still combine with."""
    cut = len(raw) - 1
    while cut > 0 and _joins(raw[cut - 1], raw[cut]):
        cut -= 1
        if len(raw) - cut > MAX_PENDING:
            return len(raw) - 1  # zalgo text: settle it slightly wrong rather than re-fold an ever longer tail
    return max(cut, 0)


class OutputWatch:
    """Moderates an answer while it streams: feed() each delta, and cut the stream when it says blocked.

    The answer is kept only as its last WINDOW + 1 normalized characters plus a few raw characters that
    may still combine with the next delta, and each delta scans the new text plus the rules' reach
    behind it (RuleSet.reach: the longest keyword or regex match, at most WINDOW), so a keyword split
    across deltas, "ki" + "ll", is caught. `scanned` counts the characters given to the matcher: per
    delta at most len(delta) + WINDOW + a few, never the whole answer again. A match that ends the text
    so far in a letter is confirmed by the next delta, or by finish() at the end, so "bomb" + "er jacket"
    is not cut. Once blocked it stays blocked."""

    def __init__(self, rules: RuleSet) -> None:
        self._rules = rules
        self._tail = ""  # settled normalized text: the last WINDOW + 1 characters
        self._pending = ""  # raw text (invisible characters removed) that the next delta may still change
        self.verdict = ALLOWED
        self.scanned = 0

    @property
    def blocked(self) -> bool:
        return not self.verdict.allowed

    def feed(self, delta: str) -> Verdict:
        if self.blocked or not delta or not self._rules:
            return self.verdict
        return self._step(delta, final=False)

    def finish(self) -> Verdict:
        """The verdict on the whole answer, once the stream has ended."""
        if self.blocked or not self._rules:
            return self.verdict
        return self._step("", final=True)

    def _step(self, delta: str, final: bool) -> Verdict:
        raw = self._pending + INVISIBLE.sub("", delta)
        cut = len(raw) if final else _settle_point(raw)
        settled = fold(raw[:cut])
        if self._tail.endswith(" ") and settled.startswith(" "):
            settled = settled[1:]  # the whitespace run continues across the delta boundary
        text = self._tail + settled
        pending = fold(raw[cut:])
        if text.endswith(" ") and pending.startswith(" "):
            pending = pending[1:]
        new = len(self._tail)  # the pending text is scanned again: the delta may have changed its form
        self.verdict = self._rules.scan(text + pending, new, final)
        self.scanned += len(text) + len(pending) - max(0, new - self._rules.reach)
        self._tail = text[-(WINDOW + 1) :]
        self._pending = raw[cut:]
        return self.verdict
