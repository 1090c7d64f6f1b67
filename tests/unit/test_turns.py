"""Dropping the oldest turns until a prompt fits (inference.turns.fit_newest_turns), shared by the text
and the vision paths of the engine."""
from __future__ import annotations

import pytest

from inference.errors import PromptTooLong
from inference.turns import fit_newest_turns


def words(messages: list[dict[str, str]]) -> list[str]:
    """A stand-in tokenizer: one token per word."""
    return [word for m in messages for word in m["content"].split()]


HISTORY = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "one two three"},
    {"role": "assistant", "content": "four five"},
    {"role": "user", "content": "six"},
]


def test_all_of_it_when_it_fits():
    assert fit_newest_turns(HISTORY, 8, words, "too long") == words(HISTORY)  # exactly the budget


def test_the_oldest_turns_go_first_the_system_stays_and_no_kept_history_starts_with_an_answer():
    seen = []

    def encode(messages):
        seen.append([m["role"] for m in messages])
        return words(messages)

    # Without its question the answer goes too: the kept turns start with the newest question.
    assert fit_newest_turns(HISTORY, 7, encode, "too long") == ["be", "brief", "six"]
    assert seen == [["system", "user", "assistant", "user"], ["system", "user"]]


def test_it_raises_the_callers_message_when_even_the_newest_message_does_not_fit():
    with pytest.raises(PromptTooLong, match="^does not fit$"):
        fit_newest_turns(HISTORY, 2, words, "does not fit")
