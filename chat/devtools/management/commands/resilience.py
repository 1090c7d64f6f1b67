"""`manage.py resilience [--quick]`: the whole stack on loopback under load and faults, one report.

Starts a private Redis, daphne processes and Celery workers (sharing this process's database),
runs the scenarios in chat/resilience/scenarios.py, and prints a table, then the same as JSON.
Exits non-zero when a scenario fails. Everything listens on 127.0.0.1; every wait is bounded.
The scenarios that are test files (database outage, fuzzing, the authorization matrix, abuse)
run in a child pytest in the full mode; `make test` runs them anyway, so the quick mode skips them.
"""
from __future__ import annotations

import asyncio
import json
import time
import traceback
from dataclasses import asdict

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from chat.devtools.resilience.scenarios import (
    FULL,
    NOT_QUICK,
    QUICK,
    SCENARIOS,
    SUITE_FILES,
    Outcome,
    People,
    run_suite,
)
from chat.devtools.resilience.stack import LoopbackStack

MODEL_MAX_NEW_TOKENS = 1900


class Command(BaseCommand):
    help = "Run the resilience scenarios against the whole stack on loopback and print a report."

    def add_arguments(self, parser):
        parser.add_argument("--quick", action="store_true", help="fewer users and shorter answers (CI)")
        parser.add_argument("--only", nargs="*", default=None, help="scenario function names to run")
        parser.add_argument("--json", dest="json_path", default="", help="also write the JSON report here")

    def handle(self, *args, quick: bool, only: list[str] | None, json_path: str, **options):
        mode = QUICK if quick else FULL
        call_command("build_demo_models", if_missing=True, stdout=self.stdout)
        # Greedy: answers never end early on a sampled end-of-sentence, so every run is the same size.
        model = {"name": "deepseek-chat", "path": str(settings.DEMO_MODELS_DIR / "demo-chat"), "demo": True,
                 "temperature": 0, "max_context": 2048, "max_new_tokens": MODEL_MAX_NEW_TOKENS}
        # The vision model too, in the same workers (as `make run` serves both): the abusive user's images
        # reach the very processes writing everyone's answers.
        vision = {"name": "deepseek-vl", "path": str(settings.DEMO_MODELS_DIR / "demo-vision"), "demo": True,
                  "vision": True, "temperature": 0, "max_context": 2048, "max_new_tokens": 96}
        stack = LoopbackStack(model, webs=2, workers=2, more_models=[vision], env={
            "ABANDONED_AFTER_SECONDS": "3",  # the slow/abandoned scenario's timeout
            # The load scenario's API streams share one key, all at once; otherwise the defaults' per-user API
            # limits hold (requests per minute included: the abusive user meets them as on a deployed site).
            "API_CONCURRENT_REQUESTS": str(FULL.api_streams), "API_TOKENS_PER_DAY": "0",
            "SOCKET_FRAME_BURST": "1000", "SIGNUPS_PER_IP_PER_HOUR": "0",
        }, ping=(2, 4))
        scenarios = [s for s in SCENARIOS if (not only or s.__name__ in only) and not (quick and s in NOT_QUICK)]
        outcomes: list[Outcome] = []
        people = People()
        started = time.monotonic()
        saved_redis_url = settings.REDIS_URL
        try:
            stack.start()
            settings.REDIS_URL = stack.redis.url  # this process routes test conversations the same way
            for scenario in scenarios:
                self.stdout.write(f"running {scenario.__name__}…")
                try:
                    outcomes.append(asyncio.run(asyncio.wait_for(scenario(stack, mode, people), 900)))
                except Exception as exc:  # a scenario that crashes fails, and the rest still run
                    outcomes.append(Outcome(scenario.__name__, "", "", problems=[
                        f"crashed: {exc!r}", traceback.format_exc()[-1500:]]))
        finally:
            stack.stop()
            settings.REDIS_URL = saved_redis_url
            people.cleanup()
        if not quick:  # in CI these files run in the same `make test` already
            for name, files in SUITE_FILES.items():
                if not only or name in only:
                    self.stdout.write(f"running {name}…")
                    outcomes.append(run_suite(name, files))
        report = {"mode": "quick" if quick else "full", "seconds": round(time.monotonic() - started, 1),
                  "passed": all(o.passed for o in outcomes), "scenarios": [asdict(o) for o in outcomes]}
        self._table(outcomes)
        text = json.dumps(report, indent=2)
        self.stdout.write("\n" + text)
        if json_path:
            with open(json_path, "w") as out:
                out.write(text)
        if not report["passed"]:
            raise CommandError("resilience: " + ", ".join(o.name for o in outcomes if not o.passed) + " failed")

    def _table(self, outcomes: list[Outcome]) -> None:
        self.stdout.write("\n" + f"{'scenario':28} {'result':6}  measured")
        for outcome in outcomes:
            figures = ", ".join(f"{k}={v}" for k, v in outcome.measured.items())
            self.stdout.write(f"{outcome.name:28} {'pass' if outcome.passed else 'FAIL':6}  {figures}")
            for problem in outcome.problems[:5]:
                self.stdout.write(f"{'':36}! {problem}")
