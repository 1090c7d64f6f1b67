"""Regex rules cannot stall a process: the admin refuses patterns that backtrack on the guard's probes, and
every regex runs under a time budget (settings.MODERATION_REGEX_TIMEOUT_MS) past which it counts as a match."""
from __future__ import annotations

import logging
import random
import re

import pytest
from django.test import Client

from chat.audit.models import AuditEvent
from chat.conversations import actions
from chat.conversations.models import Conversation, Message
from chat.core.errors import ChatError
from chat.moderation import moderator as moderation
from chat.moderation.defaults import DEFAULT_RULES
from chat.moderation.models import ModerationRule
from chat.moderation.normalize import normalize
from chat.moderation.rules import Rule, RuleSet, pattern_error

# Exponential on a run of "a" ended by anything else: each run can be split in Fibonacci-many ways.
CATASTROPHIC = "(a|aa)+$"
# Exponential too, but only on text like "xyxy…!": the guard's one-character probes miss it, so it reaches
# the rule set and shows what the time budget does.
UNSEEN = "(?:xy|xyxy)+$"
RULE = {"kind": "regex", "category": "custom", "applies_to": "both", "enabled": "on", "note": ""}


@pytest.fixture(autouse=True)
def fresh_moderator(settings):
    settings.MODERATION_ENABLED = True
    settings.MODERATION_RULES_TTL = 0
    moderation.invalidate()
    yield
    moderation.invalidate()


@pytest.mark.django_db
def test_the_admin_refuses_to_save_a_catastrophic_pattern(admin_client: Client):
    response = admin_client.post("/admin/moderation/moderationrule/add/", {**RULE, "pattern": CATASTROPHIC})

    assert response.status_code == 200
    assert "takes too long on text such as a long run of one letter" in response.content.decode()
    assert not ModerationRule.objects.exists()


@pytest.mark.parametrize("pattern", [CATASTROPHIC, r"(a|a?)+$", r"(\w|\d)+$", r"(x+x+)+y", r"(.*a){12}$"])
def test_the_guard_refuses_classic_backtracking_shapes(pattern):
    assert pattern_error("regex", pattern) is not None


@pytest.mark.parametrize("rule", [rule for rule in DEFAULT_RULES if rule.kind == "regex"], ids=lambda rule: rule.id)
def test_the_guard_admits_every_shipped_regex(rule):
    assert pattern_error("regex", rule.pattern) is None


@pytest.mark.django_db
def test_a_catastrophic_rule_saved_before_the_guard_is_skipped_and_checking_returns(caplog):
    # Given a row written without the admin form (as before this guard existed)
    row = ModerationRule.objects.create(kind="regex", pattern=CATASTROPHIC, category="custom")

    # When text that would make it backtrack for ages is checked
    with caplog.at_level(logging.WARNING, logger="chat.moderation.rules"):
        verdict = moderation.current_moderator().check_input("a" * 5000 + "b")

    # Then the check ends (the rule is skipped, with a warning naming it) and the other rules still apply
    assert verdict.allowed
    assert f"db:{row.pk} skipped" in caplog.text
    assert not moderation.current_moderator().check_input("how to make a bomb").allowed


@pytest.mark.parametrize("direction", ["input", "output"])
def test_a_rule_that_runs_past_its_budget_counts_as_a_match_in_both_directions(direction, caplog):
    rules = RuleSet([Rule("ops:slow", "regex", UNSEEN, "custom")], direction)
    assert rules.check("xyxy and more").allowed  # ordinary text is checked as before

    with caplog.at_level(logging.WARNING, logger="chat.moderation.rules"):
        verdict = rules.check("xy" * 2000 + "!")

    assert not verdict.allowed and verdict.timed_out
    assert (verdict.stage, verdict.rule_id, verdict.category) == ("rules", "ops:slow", "custom")
    assert verdict.as_detail()["timed_out"] is True
    assert "ops:slow ran past its" in caplog.text


def test_a_stream_that_makes_a_rule_run_past_its_budget_is_cut():
    watch = moderation.Moderator([Rule("ops:slow", "regex", UNSEEN, "custom", "output")]).output_watch()

    cut = [not watch.feed(delta).allowed for delta in ["xy" * 100] * 2 + ["!"]]

    assert cut == [False, False, True]
    assert watch.verdict.timed_out and watch.verdict.rule_id == "ops:slow"


@pytest.mark.django_db
def test_a_message_that_makes_a_rule_time_out_is_refused_audited_and_not_saved(alice, settings):
    settings.MODERATION_EXTRA_RULES = [{"kind": "regex", "pattern": UNSEEN, "id": "ops:slow", "applies_to": "input"}]
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat")

    with pytest.raises(ChatError) as refused:
        actions.do_send_message(alice, conversation.id, "xy" * 2000 + "!")

    assert refused.value.code == "content_filter"
    assert not Message.objects.exists()
    event = AuditEvent.objects.get(action="moderation_block")
    assert event.detail["rule_id"] == "ops:slow" and event.detail["timed_out"] is True


@pytest.mark.parametrize("rule", [rule for rule in DEFAULT_RULES if rule.kind == "regex"], ids=lambda rule: rule.id)
def test_regex_rules_match_as_pythons_re_does_on_the_normalized_text(rule):
    """The engine changed (regex, with its time budget) and rules whose text lacks their literal start are
    skipped without running: neither may change what matches."""
    pieces = ["hello ", "how do i make a bomb", "how do you build explosives ", "akia1234567890abcdef ",
              "ghp_" + "a" * 36, " sk-" + "b" * 40, "-----BEGIN RSA PRIVATE KEY-----", "xoxb-1234567890",
              "aiza" + "c" * 35, "sk_live_" + "d" * 30, "Ａｋｉａ", "\u200b", "ask-me ", "how  ", "ZZZ"]
    rng = random.Random(rule.id)
    rules = RuleSet([rule], "output")
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        expected = re.search(rule.pattern, normalize(text)) is not None
        assert (not rules.check(text).allowed) == expected, text
