"""The daily token quotas at the one road that queues an answer: how much an answer may spend, and its hold.

Both the socket (CHAT_TOKENS_PER_DAY) and /v1 (API_TOKENS_PER_DAY) queue through do_queue_answer, which
calls `hold` in the transaction that saves the answer; the worker settles the hold when the answer ends
(chat/accounts/usage.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chat.accounts import usage
from chat.conversations.models import Conversation, Message
from inference.registry import ModelSpec

# Chat-template tokens around each message (role markers, separators): generous for every template here.
TURN_OVERHEAD_TOKENS = 16


def _text_tokens(text: str) -> int:
    # An upper bound without a tokenizer: a byte-level BPE token is at least one byte of UTF-8.
    return len(text.encode("utf-8", "surrogatepass")) + TURN_OVERHEAD_TOKENS


def answer_budget(conversation: Conversation, spec: ModelSpec, parent: Message | None, turns: Sequence[Any]) -> int:
    """The most the answer may spend: an estimate of its prompt and its max_tokens, never past the model's
    context (the worker drops the oldest turns to fit it). The history before the new turns is the
    previous answer's prompt and completion, as that answer's usage recorded them."""
    answer = min(conversation.max_tokens or spec.max_new_tokens, spec.max_new_tokens)  # as the worker caps it
    if any(getattr(turn, "images", ()) for turn in turns):
        return spec.max_context  # image tokens are the processor's to count; the context bounds them
    system = [conversation.system_prompt] if conversation.system_prompt else []
    prompt = sum(_text_tokens(text) for text in [*system, *(turn.content for turn in turns)])
    previous = parent
    if previous is not None and previous.role == Message.Role.USER:  # a regeneration: its question is saved
        prompt += _text_tokens(previous.content)
        previous = previous.parent
    if previous is not None:
        prompt += previous.prompt_tokens + previous.completion_tokens
    return min(spec.max_context, prompt + answer)


def hold(conversation: Conversation, spec: ModelSpec, parent: Message | None, turns: Sequence[Any],
         answer: Message) -> None:
    """Hold the answer's budget against its user's quota for today, or raise usage.LimitExceeded (a
    ChatError). Run inside the transaction that saved `answer`: a refusal rolls it back."""
    meter = usage.Meter.API if conversation.source == Conversation.Source.API else usage.Meter.CHAT
    if not usage.tokens_per_day(meter):
        return
    _release_ended(conversation.user_id)
    usage.reserve(meter, conversation.user_id, answer.id, answer_budget(conversation, spec, parent, turns))


def _release_ended(user_id: int) -> None:
    """Give back the holds of answers that ended without their worker settling them (it died, or the
    answer was stopped before a worker took it): the sweep failed or cancelled the row, nobody else will."""
    refs = usage.held_refs(user_id)
    if refs:
        active = set(Message.objects.filter(id__in=refs, status__in=Message.ACTIVE).values_list("id", flat=True))
        usage.release([ref for ref in refs if ref not in active])
