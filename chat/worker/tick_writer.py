"""One writer per worker process: each tick it saves every growing answer in one transaction and publishes
their frames in one hand-off to the publishing loop.

Answers used to save and publish themselves, each on its own thread, about once per token at 48 streams:
~480 single-row UPDATEs and as many PUBLISHes a second, and a thread woken per stream per token
(shared/FACTS.md). Here the engine's batch only notes each request's newest tokens; this thread reads them
(`follow`), turns them into text, and saves and sends the text of all answers together. An answer written
by its own thread (a seeded or image request, an upstream model) only appends; the saving is done here too.

The tick adapts to load: STREAM_FLUSH_SECONDS while few answers are being written (smooth text), growing in
proportion beyond SMOOTH_ANSWERS up to STREAM_FLUSH_MAX_SECONDS, so the rows and frames written per second
stay about the same however many answers there are. An answer's first text goes out at once.

The resume contract holds: a frame is published only after the transaction holding its text and seq has
committed (chat/worker/replies.py).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from chat.conversations import events, liveness
from chat.conversations.frames import delta_frame
from chat.conversations.models import Message

if TYPE_CHECKING:
    from chat.worker.replies import ReplyWriter
    from inference.engine import Generation, GenerationStats

log = logging.getLogger(__name__)

SMOOTH_ANSWERS = 8  # up to this many answers, the tick is STREAM_FLUSH_SECONDS
PUMP_SECONDS = 0.05  # how often the batch's new tokens are read, between saves too (Stop, moderation)
WATCH_CHECK_SECONDS = 2.0  # how often whether anyone still watches the conversations is asked (one pipeline)
STALL_SECONDS = 60.0  # a writer that went no round for this long is stuck: its answers fail (one DB wait is 30 s)


def tick_seconds(active: int) -> float:
    base = settings.STREAM_FLUSH_SECONDS
    top = max(base, settings.STREAM_FLUSH_MAX_SECONDS)
    return min(top, base * max(1.0, active / SMOOTH_ANSWERS))


@dataclass(eq=False)
class _Entry:
    writer: ReplyWriter
    generation: Generation | None = None  # read here; None: the writer's own thread appends
    stats: GenerationStats | None = None
    ended: bool | None = None  # set once: True when the generation ended on its own
    releasing: bool = False
    error: BaseException | None = None
    released: threading.Event = field(default_factory=threading.Event)


class TickWriter:
    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_flush = 0.0
        self._last_watch_check = 0.0
        self.rounds = 0  # rounds run: a waiting writer thread tells a stuck writer from a long answer
        self.largest_flush = 0  # the most rows one transaction saved

    # ---- called from writer threads -----------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def register(self, writer: ReplyWriter) -> None:
        with self._lock:
            self._entries.setdefault(id(writer), _Entry(writer))
            self._ensure_thread()

    def follow(self, writer: ReplyWriter, generation: Generation, stats: GenerationStats) -> bool:
        """Write `generation` into `writer` until it ends or must stop; returns True when it ended on its own
        (and passed the moderation's final check), after all its text was saved and published. Engine errors
        are raised here, in the caller's thread."""
        with self._lock:
            entry = self._entries.setdefault(id(writer), _Entry(writer))
            entry.generation, entry.stats = generation, stats
            self._ensure_thread()
        self.wake()
        self._wait(entry)
        if entry.error is not None:
            raise entry.error
        return bool(entry.ended) and not writer.refused

    def release(self, writer: ReplyWriter) -> bool:
        """Save and publish what `writer` has not sent yet, then let go of it; False when a save was refused
        (the row stopped, was cancelled or deleted) or the writer must stop."""
        with self._lock:
            entry = self._entries.get(id(writer))
            if entry is None:
                return not writer.refused
            entry.releasing = True
        self.wake()
        self._wait(entry)
        return not writer.refused

    def forget(self, writer: ReplyWriter) -> None:
        """Drop a writer without saving what it holds (its answer is over, or its thread failed)."""
        with self._lock:
            entry = self._entries.pop(id(writer), None)
        if entry is not None:
            if entry.generation is not None:
                entry.generation.close()
            entry.released.set()

    def _wait(self, entry: _Entry) -> None:
        """Until the entry is let go; however long the answer takes, as long as this writer's thread keeps
        going round (one that died is started again). Stuck for STALL_SECONDS: the answer fails."""
        seen = self.rounds
        while not entry.released.wait(STALL_SECONDS):
            with self._lock:
                self._ensure_thread()
            if self.rounds != seen:
                seen = self.rounds
                continue
            log.error("the tick writer made no progress for %.0f s; giving up on %s", STALL_SECONDS,
                      entry.writer.job.message_id)
            with self._lock:
                self._entries.pop(id(entry.writer), None)
            if entry.generation is not None:
                entry.generation.close()
                entry.error = entry.error or RuntimeError("the answer's writer stopped responding")
            return

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="tick-writer", daemon=True)
            self._thread.start()

    # ---- the writer's thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                idle = not self._entries
            if idle:
                self._wake.wait(5.0)
            else:
                self._wake.wait(max(0.005, min(PUMP_SECONDS, settings.STREAM_FLUSH_SECONDS or PUMP_SECONDS)))
            self._wake.clear()
            try:
                self._round()
            except Exception:  # never let the thread die: every answer in the process depends on it
                log.exception("a tick of the reply writer failed")
                close_old_connections()
                time.sleep(0.1)

    def _round(self) -> None:
        self.rounds += 1
        with self._lock:
            entries = list(self._entries.values())
        now = time.monotonic()
        for entry in entries:
            if entry.generation is not None and entry.ended is None:
                self._pump(entry)
        if now - self._last_watch_check >= WATCH_CHECK_SECONDS:
            self._last_watch_check = now
            self._check_watched(entries, now)
        tick = tick_seconds(len(entries))
        due = now - self._last_flush >= tick
        chosen = [e for e in entries if e.writer.has_unsent() and (due or e.releasing or e.ended is not None
                                                                   or not e.writer.seq)]
        if chosen:
            if due:
                self._last_flush = now
            self._flush([e.writer for e in chosen])
        for entry in entries:
            if (entry.releasing or entry.ended is not None) and not entry.writer.has_unsent():
                with self._lock:
                    self._entries.pop(id(entry.writer), None)
                entry.released.set()

    def _pump(self, entry: _Entry) -> None:
        """The batch's new tokens for one answer, as text appended to its writer; the end or a stop settles it."""
        writer, generation, stats = entry.writer, entry.generation, entry.stats
        assert generation is not None and stats is not None
        if writer.must_stop():
            generation.close()
            entry.ended = False
            return
        try:
            deltas = generation.poll()
        except Exception as exc:  # the batch crashed: the answer's thread records the failure
            generation.close()
            entry.error, entry.ended = exc, False
            return
        for delta in deltas:
            if not writer.append(delta.content, delta.reasoning, stats.completion_tokens):
                generation.close()
                entry.ended = False
                return
        if generation.ended:
            writer.completion_tokens = stats.completion_tokens
            writer.prompt_tokens = stats.prompt_tokens or writer.prompt_tokens
            # A rule that needed the text's end to be sure: the held-back text is then never sent.
            entry.ended = writer.final_check()

    def _check_watched(self, entries: list[_Entry], now: float) -> None:
        conversations = {e.writer.job.conversation_id for e in entries}
        if not conversations:
            return
        watched = liveness.watched_among(conversations)
        for entry in entries:
            entry.writer.note_watched(entry.writer.job.conversation_id in watched, now)

    def _flush(self, writers: list[ReplyWriter]) -> None:
        """Save the writers' rows in one transaction, then publish the new text of those saved, together."""
        taken = [(w, w.take_unsent()) for w in writers]
        taken = [(w, t) for w, t in taken if t is not None]
        if not taken:
            return
        table = connection.ops.quote_name(Message._meta.db_table)
        pk = Message._meta.pk
        updated_field = Message._meta.get_field("updated_at")
        sql = (f"UPDATE {table} SET content = %s, reasoning = %s, seq = %s, prompt_tokens = %s, "
               f"completion_tokens = %s, updated_at = %s WHERE id = %s AND status = %s AND stop_requested = %s")
        saved: list[bool] = []
        try:
            now = updated_field.get_db_prep_value(timezone.now(), connection)
            with transaction.atomic(), connection.cursor() as cursor:
                for writer, unsent in taken:
                    cursor.execute(sql, [unsent.full_content, unsent.full_reasoning, unsent.seq,
                                         unsent.prompt_tokens, unsent.completion_tokens, now, pk.get_db_prep_value(
                                             writer.message_uuid, connection), Message.Status.STREAMING, False])
                    saved.append(cursor.rowcount == 1)
        except Exception:
            # The database is away: the text stays unsent, and goes out with a later tick.
            log.warning("saving %d growing answers failed; retrying at the next tick", len(taken), exc_info=True)
            for writer, unsent in taken:
                writer.restore_unsent(unsent)
            close_old_connections()
            return
        self.largest_flush = max(self.largest_flush, len(taken))
        frames = []
        for (writer, unsent), ok in zip(taken, saved, strict=True):
            if not ok:  # stopped, finished or deleted: the text goes out with the answer's end, if any
                writer.restore_unsent(unsent)
                writer.refuse()
                continue
            writer.seq = unsent.seq
            frames.append((writer.job.conversation_id,
                           delta_frame(writer.job.message_id, unsent.seq, unsent.content, unsent.reasoning)))
        if frames:
            events.publish_many(frames)


_writer: TickWriter | None = None
_writer_lock = threading.Lock()


def tick_writer() -> TickWriter:
    """This process's writer (started on first use)."""
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = TickWriter()
        return _writer


def _forget_after_fork() -> None:
    global _writer
    _writer = None


os.register_at_fork(after_in_child=_forget_after_fork)

