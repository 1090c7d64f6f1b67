"""The process's Moderator: rules then classifier, built from the shipped, admin and settings rules and cached."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.db import DatabaseError, transaction
from django.dispatch import receiver
from django.utils.translation import gettext_lazy

from chat.moderation.classifier import Classifier
from chat.moderation.defaults import DEFAULT_RULES
from chat.moderation.models import ModerationRule
from chat.moderation.output_watch import OutputWatch
from chat.moderation.rules import Rule, RuleSet, Verdict

log = logging.getLogger(__name__)

NOTICE = gettext_lazy("This content was withheld by the content filter.")


class Moderator:
    """The pipeline: rules, then the classifier for inputs; rules alone for outputs."""

    def __init__(self, rules: Iterable[Rule] = (), classifier: Classifier | None = None) -> None:
        self.rules = tuple(rules)
        self.classifier = classifier
        self._input = RuleSet(self.rules, "input")
        self._output = RuleSet(self.rules, "output")

    def check_input(self, text: str) -> Verdict:
        verdict = self._input.check(text)
        if verdict.allowed and self.classifier is not None:
            return self.classifier.check(text)
        return verdict

    def check_output(self, text: str) -> Verdict:
        """A whole answer at once (one that was not streamed)."""
        return self._output.check(text)

    def output_watch(self) -> OutputWatch:
        return OutputWatch(self._output)


def rule_from_model(row: Any) -> Rule:
    """A chat.moderation.models.ModerationRule row as a Rule."""
    return Rule(f"db:{row.pk}", row.kind, row.pattern, row.category, row.applies_to)


def rule_from_dict(data: Mapping[str, Any], number: int) -> Rule:
    """An entry of settings.MODERATION_EXTRA_RULES: {"pattern": ..., "kind", "category", "applies_to", "id"}."""
    return Rule(
        str(data.get("id") or f"settings:{number}"),
        str(data.get("kind", "keyword")),
        str(data["pattern"]),
        str(data.get("category", "custom")),
        str(data.get("applies_to", "both")),
    )


def _db_rules() -> list[Rule]:
    """The enabled rules staff edit in the admin.

    A DatabaseError (e.g. the table before its migration) propagates to current_moderator."""
    # A savepoint, so a failed query does not break a transaction the caller has open (PostgreSQL).
    with transaction.atomic():
        return [rule_from_model(row) for row in ModerationRule.objects.filter(enabled=True).order_by("pk")]


def _settings_rules() -> list[Rule]:
    rules = []
    for number, data in enumerate(getattr(settings, "MODERATION_EXTRA_RULES", []), 1):
        try:
            rules.append(rule_from_dict(data, number))
        except (KeyError, TypeError, AttributeError):
            log.warning("MODERATION_EXTRA_RULES entry %d skipped: it needs at least a 'pattern'", number)
    return rules


@dataclass(frozen=True)
class _Built:
    at: float
    key: tuple[Any, ...]
    moderator: Moderator


_clock = time.monotonic
_built: _Built | None = None
_build_lock = threading.Lock()
_ALLOW_ALL = Moderator()


def current_moderator() -> Moderator:
    """The process's moderator: shipped defaults, admin rules and settings rules, plus the classifier.

    Admin edits apply without a restart: the rules are re-read after MODERATION_RULES_TTL seconds
    (5 by default; 0 re-reads every time), in every process, and invalidate() forgets them at once in
    this one. When the rules did not change, the compiled moderator is reused. If the database cannot
    be read, the last moderator built stays in use (or, in a new process, the rules without the
    admin's). Reads the database: call it from synchronous code (actions, tasks)."""
    global _built
    if not getattr(settings, "MODERATION_ENABLED", True):
        return _ALLOW_ALL
    ttl = float(getattr(settings, "MODERATION_RULES_TTL", 5.0))
    built = _built
    if built is not None and _clock() - built.at < ttl:
        return built.moderator
    with _build_lock:
        built = _built
        now = _clock()
        if built is not None and now - built.at < ttl:  # another thread rebuilt it while this one waited
            return built.moderator
        try:
            db_rules = _db_rules()
        except DatabaseError:
            log.warning("moderation rules could not be read from the database", exc_info=True)
            if built is not None:
                _built = _Built(now, built.key, built.moderator)
                return built.moderator
            db_rules = []
        defaults: list[Rule] = []
        if getattr(settings, "MODERATION_DEFAULT_RULES", True):
            defaults = DEFAULT_RULES
        rules = (*defaults, *db_rules, *_settings_rules())
        classifier = Classifier.from_settings()
        key = (rules, classifier)
        moderator = built.moderator if built is not None and built.key == key else Moderator(rules, classifier)
        _built = _Built(now, key, moderator)
        return moderator


def invalidate() -> None:
    """Forget the cached moderator in this process, e.g. after the admin saved a rule."""
    global _built
    with _build_lock:
        _built = None


@receiver(setting_changed)
def _moderation_setting_changed(setting: str, **kwargs: Any) -> None:
    if setting.startswith("MODERATION_"):
        invalidate()
