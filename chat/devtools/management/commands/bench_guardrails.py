"""`manage.py bench_guardrails`: what moderation and auditing add to one message, measured here."""
from __future__ import annotations

import statistics
import time

from django.core.management.base import BaseCommand
from django.db import transaction

from chat.audit import record as audit
from chat.moderation import moderator as moderation

PROMPT = ("Please summarise the attached meeting notes and list the action items for each person. "
          "请把会议纪要总结一下，并列出每个人的待办事项。 ")


class _Rollback(Exception):
    pass


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


class Command(BaseCommand):
    help = "Time the input check, the streaming output watch and an audit write (printed, not asserted)."

    def add_arguments(self, parser):
        parser.add_argument("--runs", type=int, default=200)

    def handle(self, *args, runs: int, **options):
        moderator = moderation.current_moderator()
        for chars in (500, 16_000):
            text = (PROMPT * (chars // len(PROMPT) + 1))[:chars]
            samples = []
            for _ in range(runs):
                started = time.perf_counter()
                moderator.check_input(text)
                samples.append(time.perf_counter() - started)
            self.stdout.write(f"input check, {chars:>6,} characters: {_median_ms(samples):.3f} ms (median of {runs})")

        answer = PROMPT * 40  # ~4,000 characters in 4-character deltas, like a streamed answer
        watch = moderator.output_watch()
        started = time.perf_counter()
        deltas = 0
        for start in range(0, len(answer), 4):
            watch.feed(answer[start:start + 4])
            deltas += 1
        watch.finish()
        spent = time.perf_counter() - started
        self.stdout.write(f"output watch: {spent * 1e6 / deltas:.1f} µs per delta, {spent * 1000:.2f} ms for a "
                          f"{len(answer):,}-character answer")

        # Audit writes into the real database, inside a transaction rolled back at the end, so the
        # log is not touched (each write still takes the chain lock and inserts).
        samples = []
        try:
            with transaction.atomic():
                for _ in range(runs):
                    started = time.perf_counter()
                    audit.record("model_call", model="bench", input_text=PROMPT, output_text=answer,
                                 prompt_tokens=100, completion_tokens=1000, latency_ms=1, verdict="stop")
                    samples.append(time.perf_counter() - started)
                raise _Rollback
        except _Rollback:
            pass
        self.stdout.write(f"audit record: {_median_ms(samples):.3f} ms (median of {runs}, p95 "
                          f"{sorted(samples)[int(runs * 0.95)] * 1000:.3f} ms; inside a rolled-back transaction)")
