"""The worker's side of an answer: claim the row, gather its text as it grows (saved and published by the
tick writer), finish it.

Invariant that makes resume gap-free: a delta is published only after the row holding its
text (and its seq) was saved, so a client that reads the row after subscribing misses nothing.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from celery import current_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chat.accounts import usage as api_usage
from chat.audit import record as audit
from chat.conversations import events, image_budget, lifecycle, liveness, threads
from chat.conversations.frames import delta_frame, done_frame, error_frame, message_frame
from chat.conversations.models import Attachment, Message
from chat.core import log_context
from chat.core.metrics import StreamMetrics, moderation_blocked
from chat.moderation import moderator as moderation
from chat.moderation.rules import ALLOWED, Verdict
from chat.worker.tick_writer import tick_writer

log = logging.getLogger(__name__)


@dataclass
class ReplyJob:
    """What a worker needs to write one answer; no Django rows cross into the engine."""

    message_id: str
    conversation_id: str
    model: str
    # Chat-template messages, oldest first, ending with the user's; a user message may carry
    # "images": the bytes of its attached images (vision models).
    history: list[dict[str, Any]]
    # The conversation's settings; None means the model's default.
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    user_id: int | None = None  # the asker, for the audit event
    claimed_at: float = field(default_factory=time.monotonic)
    # API requests only: strings that end the answer, a sampling seed, and where it came from
    # ("api" answers count against the user's daily token quota).
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    source: str = "chat"


def claim(message_id: str) -> ReplyJob | None:
    """Take a pending answer (pending → streaming). None if it is gone, taken, or finished."""
    if not lifecycle.claim_row(message_id):
        log.info("answer %s was not pending (deleted, cancelled or taken); skipping", message_id)
        return None
    answer = Message.objects.select_related("conversation").get(id=message_id)
    conversation = answer.conversation
    # The answer continues its own branch: its ancestors, not every earlier message.
    nodes = Message.objects.filter(conversation_id=conversation.id).only(
        "id", "parent_id", "position", "role", "content", "status"
    )
    earlier = [
        m for m in threads.path_to(answer.parent_id, nodes)
        if not (m.role == Message.Role.ASSISTANT and not m.content) and m.status != Message.Status.FAILED
    ]
    history: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in earlier]
    images = _images_by_message([m.id for m in earlier if m.role == Message.Role.USER])
    for message, turn in zip(earlier, history, strict=True):
        if images.get(message.id):
            turn["images"] = images[message.id]
    if conversation.system_prompt:
        history.insert(0, {"role": "system", "content": conversation.system_prompt})
    return ReplyJob(str(answer.id), str(conversation.id), conversation.model, history,
                    conversation.temperature, conversation.top_p, conversation.max_tokens, conversation.user_id,
                    stop=list(conversation.stop or []), seed=conversation.seed, source=conversation.source)


def _user(user_id: int | None) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.filter(id=user_id).first() if user_id else None


def _images_by_message(message_ids: list[Any]) -> dict[Any, list[bytes]]:
    """The stored (validated, re-encoded) images of these messages (oldest first) that the answer looks at, in
    upload order: the newest that fit the per-request budget (chat/conversations/image_budget.py), counted by
    the sizes their rows recorded. Older ones are left out, their turns keeping their text, and only the kept
    files are read: a branch written before a limit was lowered cannot make the engine decode more."""
    order = {message_id: index for index, message_id in enumerate(message_ids)}
    newest_first = sorted(
        Attachment.objects.filter(message_id__in=message_ids).only("id", "message_id", "file", "width", "height",
                                                                    "created_at"),
        key=lambda attachment: (order[attachment.message_id], attachment.created_at), reverse=True,
    )
    kept = newest_first[:image_budget.newest_within_budget([(a.width, a.height) for a in newest_first])]
    if len(kept) < len(newest_first):
        log.info("the answer looks at the newest %d of its branch's %d images", len(kept), len(newest_first))
    found: dict[Any, list[bytes]] = {}
    for attachment in reversed(kept):
        with attachment.file.open("rb") as stored:
            found.setdefault(attachment.message_id, []).append(stored.read())
    return found


@dataclass(frozen=True)
class Unsent:
    """What one save takes from a writer: the whole text so far (the row) and the part not yet sent (the frame)."""

    seq: int
    prompt_tokens: int
    completion_tokens: int
    full_content: str
    full_reasoning: str
    content: str
    reasoning: str


@dataclass(eq=False)
class ReplyWriter:
    """Accumulates an answer. The process's tick writer (chat/worker/tick_writer.py) saves the row and then
    publishes the new text, for all answers together; appending never waits on the database or Redis."""

    job: ReplyJob
    content: str = ""
    reasoning: str = ""
    seq: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    abandoned: bool = False
    refused: bool = False  # a save found the row stopped, finished or deleted
    filtered: Verdict | None = None  # the moderation verdict that cut the answer
    _unsent_content: str = ""
    _unsent_reasoning: str = ""
    _unwatched_since: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._stop = liveness.cancel_watch.watch(self.job.message_id)
        moderator = moderation.current_moderator()
        self._content_watch = moderator.output_watch()
        self._reasoning_watch = moderator.output_watch()
        self._metrics = StreamMetrics(self.job.model, self.job.claimed_at)  # TTFT, token gaps, active streams
        self.message_uuid = uuid.UUID(self.job.message_id)

    def close(self) -> None:
        tick_writer().forget(self)
        liveness.cancel_watch.unwatch(self.job.message_id)
        self._metrics.closed()

    def _row(self):
        return Message.objects.filter(id=self.job.message_id)

    def start(self, prompt_tokens: int) -> None:
        """The prompt is ready: the count is saved with the first text (one write less per answer)."""
        self.prompt_tokens = prompt_tokens
        tick_writer().register(self)

    def must_stop(self) -> bool:
        """Stop pressed, the row refused a save, or nobody is watching."""
        return self._stop.is_set() or self.refused or self.abandoned

    def append(self, content: str, reasoning: str, completion_tokens: int) -> bool:
        """Add text; returns False when the answer must stop (Stop pressed, nobody watching, the
        row refused a save, or the text tripped a moderation rule: see `filtered`)."""
        if self.must_stop() or self.filtered is not None:
            return False
        # Moderated before it is saved or published: text that trips a rule never leaves the worker.
        for watch, text in ((self._content_watch, content), (self._reasoning_watch, reasoning)):
            verdict = watch.feed(text) if text else ALLOWED
            if not verdict.allowed:
                self.filtered = verdict
                return False
        with self._lock:
            self.content += content
            self.reasoning += reasoning
            self._unsent_content += content
            self._unsent_reasoning += reasoning
            self.completion_tokens = completion_tokens
        self._metrics.delta(completion_tokens)
        if not self.seq:
            tick_writer().wake()  # an answer's first text goes out at once
        return True

    def note_watched(self, watched: bool, now: float) -> None:
        """The tick writer asks every few seconds whether anyone has the conversation open."""
        if watched:
            self._unwatched_since = None
        elif self._unwatched_since is None:
            # Not yet: a restarted Redis has lost every watched key until the sockets' next refresh
            # (every third of the timeout); only an absence longer than that means nobody is there.
            self._unwatched_since = now
        elif now - self._unwatched_since >= settings.ABANDONED_AFTER_SECONDS / 2 and not self.abandoned:
            log.info("nobody is watching conversation %s; cancelling %s", self.job.conversation_id,
                     self.job.message_id)
            self.abandoned = True

    def final_check(self) -> bool:
        """At the natural end: a rule that needed the text's end to be sure (a word's last letter)."""
        for watch in (self._content_watch, self._reasoning_watch):
            verdict = watch.finish()
            if not verdict.allowed:
                self.filtered = verdict
                return False
        return True

    # ---- the tick writer's side -----------------------------------------------------------------------
    def has_unsent(self) -> bool:
        return bool(self._unsent_content or self._unsent_reasoning) and self.filtered is None and not self.refused

    def take_unsent(self) -> Unsent | None:
        """The text to save and send now (None: nothing); the caller saves it and publishes it as seq+1."""
        with self._lock:
            if not self.has_unsent():
                return None
            unsent = Unsent(self.seq + 1, self.prompt_tokens, self.completion_tokens, self.content, self.reasoning,
                            self._unsent_content, self._unsent_reasoning)
            self._unsent_content = self._unsent_reasoning = ""
            return unsent

    def restore_unsent(self, unsent: Unsent) -> None:
        """A save failed: the taken text goes back in front of what came since."""
        with self._lock:
            self._unsent_content = unsent.content + self._unsent_content
            self._unsent_reasoning = unsent.reasoning + self._unsent_reasoning

    def refuse(self) -> None:
        self.refused = True

    def release(self) -> bool:
        """Wait until all text appended so far is saved and published; False when the row refused it."""
        return tick_writer().release(self)

    def should_cancel(self) -> bool:
        """After a refused save or append: cancel (Stop or abandoned), or just let go (deleted)."""
        return self.abandoned or self._row().filter(stop_requested=True).exists()

    def finish(self, status: str, finish_reason: str, error: str = "") -> Message | None:
        """Save the final text and state, then publish the remaining text and `done`."""
        tick_writer().release(self)  # what it still holds is saved and sent first: frames stay in seq order
        self._metrics.finished(self.completion_tokens)
        unsent = bool(self._unsent_content or self._unsent_reasoning)
        final_seq = self.seq + 1 if unsent else self.seq
        # The row's end and its audit event in one transaction: one turn at the database's write lock.
        with transaction.atomic():
            saved = self._row().filter(status=Message.Status.STREAMING).update(
                status=status, finish_reason=finish_reason, error=error[:500], content=self.content,
                reasoning=self.reasoning, seq=final_seq, prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens, stop_requested=False, updated_at=timezone.now(),
            )
            self._audit(finish_reason if saved else "deleted")
        if self.job.user_id is not None:  # its quota hold is replaced by what it spent
            api_usage.settle(self.job.source, self.job.user_id, self.job.message_id, self.prompt_tokens,
                             self.completion_tokens)
        if not saved:  # deleted meanwhile: nobody to tell
            return None
        frames = []
        if unsent:
            self.seq = final_seq
            frames.append(delta_frame(self.job.message_id, self.seq, self._unsent_content, self._unsent_reasoning))
            self._unsent_content = self._unsent_reasoning = ""
        message = Message.objects.get(id=self.job.message_id)
        if status == Message.Status.FAILED:
            frames.append(error_frame("generation_failed", error, message_id=message.id))
        # The finished row once more, now with its rendered HTML (pages swap the plain text for it).
        frames += [message_frame(message), done_frame(message)]
        events.publish_many([(self.job.conversation_id, frame) for frame in frames])  # in order, one hand-off
        return message

    def _audit(self, outcome: str) -> None:
        """One audit event per generation: hashes of the question and the answer, never their text."""
        question = next((m["content"] for m in reversed(self.job.history) if m["role"] == "user"), "")
        detail: dict[str, Any] = {"finish_reason": outcome}
        if self.job.source != "chat":
            detail["source"] = self.job.source  # an API request
        worker = getattr(current_task.request, "hostname", None) if current_task else None
        if worker:
            detail["worker"] = worker  # which worker process answered (routing, incidents)
        if self.filtered is not None:
            detail.update({"direction": "output", **self.filtered.as_detail()})
        # The task's request id (from the socket frame or API request that queued it): the audit
        # reads it from a request-like mapping, as it does from a Channels scope.
        request_id = log_context.request_id()
        audit.record(
            "model_call", actor=_user(self.job.user_id), conversation_id=self.job.conversation_id,
            request={"audit_request_id": request_id} if request_id else None,
            message_id=self.job.message_id, model=self.job.model, input_text=question, output_text=self.content,
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
            latency_ms=round((time.monotonic() - self.job.claimed_at) * 1000),
            verdict="content_filter" if self.filtered is not None else outcome, detail=detail,
        )

    def done(self, finish_reason: str) -> Message | None:
        return self.finish(Message.Status.DONE, finish_reason)

    def content_filtered(self) -> Message | None:
        """End a cut answer: its partial text is replaced by the notice the page shows (an empty
        answer with finish_reason content_filter); nothing of the tripping text is kept."""
        moderation_blocked("output")
        self.content = self.reasoning = ""
        self._unsent_content = self._unsent_reasoning = ""
        return self.finish(Message.Status.DONE, "content_filter")

    def cancelled(self) -> Message | None:
        return self.finish(Message.Status.CANCELLED, "cancelled")

    def fail(self, error: str) -> Message | None:
        return self.finish(Message.Status.FAILED, "error", error)

