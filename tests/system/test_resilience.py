"""The resilience suite's quick mode (what CI runs): the whole stack on loopback, every scenario passes."""
from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.mark.timeout(1200)
def test_the_quick_resilience_suite_passes_and_reports_every_scenario(tmp_path):
    out = StringIO()
    report_path = tmp_path / "resilience.json"
    try:
        call_command("resilience", "--quick", "--json", str(report_path), stdout=out)
    except CommandError:
        pass  # the report below says which scenario failed, and why
    report = json.loads(report_path.read_text())
    names = [s["name"] for s in report["scenarios"]]
    assert names == ["load", "worker killed", "Redis restarted", "daphne restarted",
                     "slow and abandoned clients", "abusive user"]
    assert report["passed"], out.getvalue()[out.getvalue().find("scenario "):][:4000]
    load = report["scenarios"][0]["measured"]
    assert load["answers"] == load["expected_answers"] and load["tokens_per_s"] > 0
    abused = report["scenarios"][5]["measured"]
    # Its time-per-token ratio is the full run's figure (README); here: every answer of the ten came back.
    assert abused["answers_abused"] == abused["answers_quiet"] > 0 and abused["ratio_p50"] is not None
    assert "scenario" in out.getvalue() and "pass" in out.getvalue()  # the table
