"""Content moderation of inputs and streamed outputs: keyword and regex rules, and an optional local classifier."""
from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.db import DatabaseError, transaction
from django.dispatch import receiver
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

log = logging.getLogger(__name__)

NOTICE = gettext_lazy("This content was withheld by the content filter.")

KINDS = ("keyword", "regex")
APPLIES_TO = ("input", "output", "both")

# The most a streamed answer is re-scanned behind each new delta, in normalized characters: each rule
# looks back as far as its longest possible match, capped here. A regex match longer than this that
# straddles a delta boundary is not seen by OutputWatch (keywords may be no longer: pattern_error
# refuses them); Moderator.check_output of the whole answer has no such limit.
WINDOW = 256
# Regex rules run on at most this many characters at a time (consecutive spans overlap by WINDOW), so a
# slow pattern costs at most (span / length) times its cost on one span instead of growing with the
# square (or worse) of a 16,000-character prompt.
REGEX_SPAN = 4096
# A run of combining marks longer than this (only "zalgo" text has one) is normalized in pieces.
MAX_PENDING = 32
# A repetition allowed more times than this counts as large in the nested-repetition check.
_LARGE_REPEAT = 16

# Format characters that render as nothing and are used to split a word for the filter (soft hyphen,
# zero-width space, joiners, word joiner, invisible operators, BOM).
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200d\u2060-\u2064\ufeff]")
# Whitespace other than a single space: collapsing only these is faster than rewriting every space.
_SPACES = re.compile(r"[^\S ]\s*| \s+")
# Full-width ASCII and the ideographic space, common in Chinese text: mapped here so that most text
# passes NFKC's quick check instead of being normalized character by character (5 times slower).
_WIDE = re.compile("[\u3000\uff01-\uff5e]")
_NARROW = {chr(code): unicodedata.normalize("NFKC", chr(code)) for code in (0x3000, *range(0xFF01, 0xFF5F))}
# A letter or digit of a script that separates words with spaces: CJK, kana and Hangul are \w to
# Python but have no word boundaries, so they never make a keyword's edge part of a longer word.
_WORD_CLASS = r"[^\W\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\U00020000-\U0003ffff]"
_WORD = re.compile(_WORD_CLASS)


@dataclass(frozen=True)
class Rule:
    id: str  # "default:violence-1" for shipped rules, "db:<pk>" for admin rules, "settings:<n>" for settings
    kind: str  # "keyword" | "regex"
    pattern: str
    category: str
    applies_to: str = "both"  # "input" | "output" | "both"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    stage: str = ""  # "rules" | "classifier"
    rule_id: str = ""
    category: str = ""
    score: float | None = None  # the classifier's confidence

    def as_detail(self) -> dict[str, Any]:
        """What the audit log keeps for staff: which stage and rule blocked, never the text itself."""
        detail: dict[str, Any] = {"stage": self.stage, "rule_id": self.rule_id, "category": self.category}
        if self.score is not None:
            detail["score"] = round(self.score, 4)
        return detail


ALLOWED = Verdict(True)


def _fold(text: str) -> str:
    """normalize() without the final strip, so pieces of a stream can be folded one after another."""
    text = _INVISIBLE.sub("", text)
    if text.isascii():  # NFKC leaves ASCII alone and casefold is lower() there: the common case, faster
        return _SPACES.sub(" ", text.lower())
    # Exact: these characters decompose to ASCII, which never composes with a neighbour.
    text = _WIDE.sub(lambda match: _NARROW[match.group()], text)
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return _SPACES.sub(" ", text.casefold())


def normalize(text: str) -> str:
    """The form rules match against: invisible characters removed, NFKC (full-width and compatibility
    forms become plain ones), casefolded, whitespace runs made one space. Chinese is left as it is."""
    return _fold(text).strip()


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


def _literal(char: str) -> str:
    """One folded character as a regex literal; hex escapes keep a full-width digit or bracket from
    turning into a quantifier, backreference or group once it is ASCII."""
    return char if not char.isascii() or char.isalpha() else f"\\x{ord(char):02x}"


def _fold_pattern(pattern: str) -> str:
    """A regex rewritten for normalized text, where that is safe: invisible characters dropped, and each
    non-ASCII literal outside an escape replaced by its normalized form (so "ｂｏｍｂ" and "ＢＯＭＢ" in a
    pattern mean "bomb"). ASCII, escapes and the syntax are left alone; inside a [class] a character is
    replaced only by a single character. Capitals are handled by re.IGNORECASE, not by rewriting."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        i += 1
        if _INVISIBLE.match(char):
            continue
        if char == "[" and not in_class:
            in_class = True
            # A "]" straight after "[" or "[^" is a literal, not the end of the class.
            for literal in ("^", "]"):
                if pattern[i : i + 1] == literal:
                    char += literal
                    i += 1
        elif char == "]" and in_class:
            in_class = False
        elif not char.isascii():
            folded = unicodedata.normalize("NFKC", char).casefold()
            if folded != char and folded:
                if not in_class:
                    literal = "".join(_literal(c) for c in folded)
                    char = literal if len(folded) == 1 else f"(?:{literal})"
                elif len(folded) == 1:
                    char = _literal(folded)
        out.append(char)
    return "".join(out)


def _nested_repeat(pattern: str) -> bool:
    """Whether a large repetition sits inside another, as in (a+)+ or (\\w+\\s?)*: the shape that makes a
    backtracking matcher take exponential time. Possessive quantifiers and atomic groups never backtrack
    into their body, so they are fine. (Overlapping alternatives such as (a|aa)+ are not detected.)"""
    try:
        from re import _constants as sre
        from re import _parser as parser  # private, but it is the parser of exactly Python's syntax
    except ImportError:  # pragma: no cover - another Python
        return False

    def walk(items: Any, inside: bool) -> bool:
        for op, av in items:
            if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
                _, high, body = av
                large = high > _LARGE_REPEAT
                if (large and inside) or walk(body, inside or large):
                    return True
            elif op is sre.SUBPATTERN:
                if walk(av[3], inside):
                    return True
            elif op is sre.BRANCH:
                if any(walk(branch, inside) for branch in av[1]):
                    return True
            elif op in (sre.ASSERT, sre.ASSERT_NOT):
                if walk(av[1], inside):
                    return True
            elif op is sre.GROUPREF_EXISTS:
                if any(walk(branch, inside) for branch in av[1:] if branch is not None):
                    return True
        return False

    return walk(parser.parse(pattern), False)


def pattern_error(kind: str, pattern: str) -> str | None:
    """Why the engine cannot use a rule's pattern, or None; for the admin form's validation too."""
    if kind not in KINDS:
        return _("Unknown rule kind “%(kind)s”.") % {"kind": kind}
    if not normalize(pattern):
        return _("The pattern is empty.")
    if kind == "keyword":
        if len(normalize(pattern)) > WINDOW:
            return _("A keyword can be at most %(limit)d characters long.") % {"limit": WINDOW}
        return None
    try:
        compiled = _compile_regex(_fold_pattern(pattern))
    except (re.error, RecursionError, OverflowError, ValueError) as error:
        return _("This regular expression does not compile: %(error)s") % {"error": error}
    if compiled.search("") is not None:
        return _("This regular expression matches empty text, so it would block everything.")
    if _nested_repeat(_fold_pattern(pattern)):
        return _("Nested repetition such as (a+)+ can take exponential time; use a possessive quantifier (a++) "
                 "or an atomic group (?>…) inside.")
    return None


def _trie(keywords: Iterable[str]) -> str:
    """The longest-first alternation of keywords with shared prefixes factored out (a trie)."""
    root: dict[str, Any] = {}
    for keyword in keywords:
        node = root
        for char in keyword:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + emit(node[char]) for char in sorted(node) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and "" not in node else "(?:" + "|".join(branches) + ")"
        # Optional and greedy: the longer keyword is tried first, the shorter one on backtracking.
        return body + "?" if "" in node else body

    return emit(root)


def _keywords_pattern(keywords: Iterable[str]) -> str:
    """All keywords as one regex. Python's matcher tries an alternation's branches one by one at every
    position, so 500 plain alternatives take ~170 ms on 16,000 characters. Here they are grouped by
    whether each edge needs a word boundary, each group is a trie, and a character class of its first
    characters lets a position that cannot start a keyword fail at once: ~1 ms."""
    groups: dict[tuple[bool, bool], list[str]] = {}
    for keyword in keywords:
        edges = (bool(_WORD.match(keyword[0])), bool(_WORD.match(keyword[-1])))
        groups.setdefault(edges, []).append(keyword)
    parts = []
    for (lead, trail), members in sorted(groups.items(), reverse=True):
        firsts = "".join(re.escape(char) for char in sorted({keyword[0] for keyword in members}))
        part = f"(?=[{firsts}])(?:{_trie(members)})"
        # "kill" must match neither inside "skill" nor at the start of "killer"; a CJK edge has no boundary.
        if lead:
            part = f"(?<!{_WORD_CLASS})" + part
        if trail:
            part += f"(?!{_WORD_CLASS})"
        parts.append(part)
    return "|".join(parts)


def _reach(pattern: str) -> int:
    """The longest text a regex can match, capped at WINDOW: how far back a stream must re-scan for it."""
    try:
        from re import _parser as parser  # private, but it is the parser of exactly Python's syntax

        return min(parser.parse(pattern).getwidth()[1], WINDOW)
    except Exception:  # pragma: no cover - another Python
        return WINDOW


def _compile_regex(pattern: str) -> re.Pattern[str]:
    """The text is casefolded already, so IGNORECASE is needed only for a pattern with capitals, and
    leaving it off lets the matcher skip ahead to a pattern's literal start (it cannot for a cased one)."""
    uncased = re.sub(r"\\.", "", pattern)  # \S, \W, \D are not capitals
    return re.compile(pattern, re.IGNORECASE if any(char.isupper() for char in uncased) else 0)


def _may_grow(text: str, match: re.Match[str]) -> bool:
    """A match at the very end of a stream that ends in a letter may be the start of a longer word
    ("how to make a bomb" + "er jacket"); the next delta or OutputWatch.finish decides."""
    return match.end() == len(text) and match.end() > match.start() and bool(_WORD.match(text[-1]))


def _blocked(rule: Rule) -> Verdict:
    return Verdict(False, "rules", rule.id, rule.category)


class RuleSet:
    """Compiled rules for one direction; matching is on normalize(text).

    Keywords match as whole words where their edge is a letter or digit of a spaced script ("kill"
    matches "Kill!" but not "skill") and as plain substrings where it is Chinese (no spaces there).
    Regex rules run case-insensitively on the normalized text, after _fold_pattern; an unusable one is
    skipped with a warning rather than letting an admin edit stop moderation. A regex whose first item is
    a literal is much cheaper than one that starts with a lookbehind or \\b (the matcher can skip ahead)."""

    def __init__(self, rules: Iterable[Rule], direction: str) -> None:
        if direction not in ("input", "output"):
            raise ValueError(f"direction must be 'input' or 'output', not {direction!r}")
        self.direction = direction
        self.rules = tuple(rule for rule in rules if rule.applies_to in (direction, "both"))
        self._by_keyword: dict[str, Rule] = {}
        self._regexes: list[tuple[re.Pattern[str], int, Rule]] = []
        for rule in self.rules:
            error = pattern_error(rule.kind, rule.pattern)
            if error:
                log.warning("moderation rule %s skipped: %s", rule.id, error)
            elif rule.kind == "keyword":
                self._by_keyword.setdefault(normalize(rule.pattern), rule)  # the first rule of a keyword wins
            else:
                pattern = _fold_pattern(rule.pattern)
                self._regexes.append((_compile_regex(pattern), _reach(pattern), rule))
        self._keywords = re.compile(_keywords_pattern(self._by_keyword)) if self._by_keyword else None
        self._keyword_reach = max(map(len, self._by_keyword), default=0)
        # How far before the new text of a stream a match may start.
        self.reach = max([self._keyword_reach, *(reach for _, reach, _ in self._regexes)])

    def __bool__(self) -> bool:
        return bool(self._by_keyword or self._regexes)

    def check(self, text: str) -> Verdict:
        return self._scan(_fold(text), 0, final=True)

    def _scan(self, text: str, new: int, final: bool) -> Verdict:
        """The first rule with a match that reaches text[new:] (each rule looks back as far as its
        longest match); earlier characters are context for the boundaries only. When not final, a
        match that _may_grow waits for more text."""
        if self._keywords is not None:
            pos = max(0, new - self._keyword_reach)
            while (match := self._keywords.search(text, pos)) is not None:
                if final or not _may_grow(text, match):
                    return _blocked(self._by_keyword[match.group()])
                pos = match.start() + 1
        for pattern, reach, rule in self._regexes:
            if self._regex_matches(pattern, text, max(0, new - reach), final):
                return _blocked(rule)
        return ALLOWED

    @staticmethod
    def _regex_matches(pattern: re.Pattern[str], text: str, start: int, final: bool) -> bool:
        end = len(text)
        while True:
            stop = min(start + REGEX_SPAN, end)
            for match in pattern.finditer(text, start, stop):
                # A lookahead cannot see past a span's end: the overlapping next span judges that match.
                if match.end() == stop < end:
                    continue
                if final or not _may_grow(text, match):
                    return True
            if stop >= end:
                return False
            start = stop - WINDOW


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
        raw = self._pending + _INVISIBLE.sub("", delta)
        cut = len(raw) if final else _settle_point(raw)
        settled = _fold(raw[:cut])
        if self._tail.endswith(" ") and settled.startswith(" "):
            settled = settled[1:]  # the whitespace run continues across the delta boundary
        text = self._tail + settled
        pending = _fold(raw[cut:])
        if text.endswith(" ") and pending.startswith(" "):
            pending = pending[1:]
        new = len(self._tail)  # the pending text is scanned again: the delta may have changed its form
        self.verdict = self._rules._scan(text + pending, new, final)
        self.scanned += len(text) + len(pending) - max(0, new - self._rules.reach)
        self._tail = text[-(WINDOW + 1) :]
        self._pending = raw[cut:]
        return self.verdict


_pipelines: dict[str, Any] = {}
_pipelines_lock = threading.Lock()


@dataclass(frozen=True)
class Classifier:
    """A local Hugging Face text-classification model, for inputs only: one forward pass per message is
    fine in the web tier, one per streamed token of an answer is not (outputs rely on the rules).

    The model sees the raw text (it has its own tokenizer), truncated to its maximum length."""

    path: str
    block_labels: tuple[str, ...] = ("toxic",)
    threshold: float = 0.8

    @classmethod
    def from_settings(cls) -> Classifier | None:
        path = str(getattr(settings, "MODERATION_CLASSIFIER_PATH", "") or "")
        if not path:
            return None
        labels = getattr(settings, "MODERATION_CLASSIFIER_BLOCK_LABELS", ["toxic"])
        if isinstance(labels, str):
            labels = [labels]
        threshold = float(getattr(settings, "MODERATION_CLASSIFIER_THRESHOLD", 0.8))
        return cls(path, tuple(labels), threshold)

    def _pipeline(self) -> Any:
        """Loaded on first use and kept for the process; a load failure propagates (no silent fail-open)."""
        with _pipelines_lock:
            if self.path not in _pipelines:
                from transformers import pipeline

                log.info("loading the moderation classifier from %s", self.path)
                _pipelines[self.path] = pipeline("text-classification", model=self.path, device=-1)
            return _pipelines[self.path]

    def check(self, text: str) -> Verdict:
        if not text.strip():
            return ALLOWED
        classify = self._pipeline()
        with _pipelines_lock:  # a fast tokenizer must not be used by two threads at once
            result = classify(text, truncation=True)
        top = result[0] if isinstance(result, list) else result
        label, score = str(top["label"]), float(top["score"])
        blocked = {name.casefold() for name in self.block_labels}
        if label.casefold() in blocked and score >= self.threshold:
            return Verdict(False, "classifier", f"classifier:{label}", label, score)
        return ALLOWED


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
    """A chat.audit.models.ModerationRule row as a Rule."""
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
    """The enabled rules staff edit in the admin; none while that model does not exist.

    A DatabaseError (e.g. the table before its migration) propagates to current_moderator."""
    try:
        from chat.moderation.models import ModerationRule
    except ImportError:
        return []
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
            from chat.moderation.defaults import DEFAULT_RULES

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
