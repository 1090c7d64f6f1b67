"""Moderation rules: Rule and Verdict, the checks a rule's pattern must pass, and RuleSet, which matches them."""
from __future__ import annotations

import functools
import logging
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import regex
from django.conf import settings
from django.utils.translation import gettext as _

from chat.moderation.normalize import INVISIBLE, fold, normalize

log = logging.getLogger(__name__)

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
# A repetition allowed more times than this counts as large in the nested-repetition check.
_LARGE_REPEAT = 16
# The time one regex rule may take on one text (a whole input, or one streamed delta with its reach) when
# settings.MODERATION_REGEX_TIMEOUT_MS does not say: rules that do not backtrack take microseconds.
REGEX_TIMEOUT_MS = 50
# The characters repeated in the probes a new regex must get through (besides those of its own literals).
_PROBE_CHARS = "a0 -.x"
_PROBE_TAILS = ("!", "\x00")
# The most literal beginnings (_leads) kept for one regex: (?:akia|asia) has 2, gh[pousr]_ 5.
_MAX_LEADS = 16
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
    timed_out: bool = False  # the rule ran past its time budget and counted as a match (RuleSet)

    def as_detail(self) -> dict[str, Any]:
        """What the audit log keeps for staff: which stage and rule blocked, never the text itself."""
        detail: dict[str, Any] = {"stage": self.stage, "rule_id": self.rule_id, "category": self.category}
        if self.score is not None:
            detail["score"] = round(self.score, 4)
        if self.timed_out:
            detail["timed_out"] = True
        return detail


ALLOWED = Verdict(True)


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
        if INVISIBLE.match(char):
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
    except (re.error, regex.error, RecursionError, OverflowError, ValueError) as error:
        return _("This regular expression does not compile: %(error)s") % {"error": error}
    if compiled.search("") is not None:
        return _("This regular expression matches empty text, so it would block everything.")
    if _nested_repeat(_fold_pattern(pattern)):
        return _("Nested repetition such as (a+)+ can take exponential time; use a possessive quantifier (a++) "
                 "or an atomic group (?>…) inside.")
    if _backtracks(_fold_pattern(pattern)):
        return _("This regular expression takes too long on text such as a long run of one letter (as (a|aa)+ "
                 "does); rewrite it so that each part can match in only one way.")
    return None


def _timeout_seconds() -> float:
    return max(0, int(getattr(settings, "MODERATION_REGEX_TIMEOUT_MS", REGEX_TIMEOUT_MS))) / 1000


@functools.lru_cache(maxsize=1024)
def _backtracks(pattern: str) -> bool:
    """Whether a folded regex runs past its time budget on one of a few probes: a span-long run of one
    character (one of the pattern's own, or a common one) ended by one that fails the match, the text
    that makes (a|aa)+$ or (\\w+\\s?)*$ backtrack. A guard for the admin form, not a proof: RuleSet still
    runs every rule under the budget. Cached, because each moderator rebuild checks every rule again."""
    compiled = _compile_regex(pattern)
    chars = dict.fromkeys(_PROBE_CHARS + "".join(char for char in pattern if char.isprintable()))
    try:
        for char in list(chars)[:32]:
            for tail in _PROBE_TAILS:
                compiled.search(char * REGEX_SPAN + tail, timeout=_timeout_seconds())
    except TimeoutError:
        return True
    return False


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


def _leads(pattern: str) -> tuple[str, ...]:
    """Texts one of which begins every match of a folded regex, or () when it has none to be sure of (or
    ignores case). A rule none of whose leads is in the text cannot match, so RuleSet skips it without
    running the matcher: most deltas of a stream contain no "-----begin" or "sk-", and each run under a
    time budget costs two reads of the process clock, more than the search itself."""
    try:
        from re import _constants as sre
        from re import _parser as parser  # private, but it is the parser of exactly Python's syntax

        parsed = parser.parse(pattern)
    except Exception:  # pragma: no cover - another Python
        return ()
    zero_width = (sre.AT, sre.ASSERT, sre.ASSERT_NOT)

    def walk(items: Any, heads: list[str]) -> tuple[list[str], bool]:
        """`heads` grown by the literal text the items begin with; True when all of the items were."""
        for op, av in items:
            if op is sre.LITERAL:
                heads = [head + chr(av) for head in heads]
            elif op in zero_width:  # consumes nothing: the literal after it follows on
                continue
            elif op is sre.IN and all(kind is sre.LITERAL for kind, _ in av) and len(heads) * len(av) <= _MAX_LEADS:
                heads = [head + chr(code) for head in heads for _, code in av]
            elif op is sre.SUBPATTERN and not av[1] and not av[2]:  # a group that sets no flags
                heads, whole = walk(av[3], heads)
                if not whole:
                    return heads, False
            elif op is sre.BRANCH:
                grown = [head + tail for head in heads for branch in av[1] for tail in walk(branch, [""])[0]]
                return (grown, False) if len(grown) <= _MAX_LEADS else (heads, False)
            else:
                return heads, False
        return heads, True

    if parsed.state.flags & re.IGNORECASE:
        return ()
    heads = walk(parsed, [""])[0]
    return () if "" in heads else tuple(dict.fromkeys(heads))


def _compile_regex(pattern: str) -> regex.Pattern[str]:
    """A rule's regex for the `regex` engine, which can stop a match that runs past its time budget
    (Python's re cannot, and google-re2 has no lookarounds, which the shipped rules need). The syntax
    accepted stays exactly Python's: re compiles it first (_reach and _nested_repeat read its parse).
    The text is casefolded already, so IGNORECASE is needed only for a pattern with capitals, and
    leaving it off lets the matcher skip ahead to a pattern's literal start (it cannot for a cased one)."""
    uncased = re.sub(r"\\.", "", pattern)  # \S, \W, \D are not capitals
    flags = re.IGNORECASE if any(char.isupper() for char in uncased) else 0
    re.compile(pattern, flags)
    return regex.compile(pattern, regex.V0 | (regex.IGNORECASE if flags else 0))


def _may_grow(text: str, match: re.Match[str] | regex.Match[str]) -> bool:
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
    a literal is much cheaper than one that starts with a lookbehind or \\b (the matcher can skip ahead).

    Each regex rule gets a time budget per check (settings.MODERATION_REGEX_TIMEOUT_MS, for the whole
    text of an input or one step of a stream). A rule that runs past it counts as a match, in both
    directions (fail closed): the text is refused or the answer cut, a warning names the rule, and the
    verdict says timed_out so the audit event tells staff which rule to fix. Failing open would let
    anyone who finds a slow rule pad a text until that rule gives up and then say what it forbids; and
    a stream would pay the budget again on every delta, where a cut answer pays it once."""

    def __init__(self, rules: Iterable[Rule], direction: str) -> None:
        if direction not in ("input", "output"):
            raise ValueError(f"direction must be 'input' or 'output', not {direction!r}")
        self.direction = direction
        self.rules = tuple(rule for rule in rules if rule.applies_to in (direction, "both"))
        self._by_keyword: dict[str, Rule] = {}
        self._regexes: list[tuple[regex.Pattern[str], int, tuple[str, ...], Rule]] = []
        self._timeout = _timeout_seconds()
        for rule in self.rules:
            error = pattern_error(rule.kind, rule.pattern)
            if error:
                log.warning("moderation rule %s skipped: %s", rule.id, error)
            elif rule.kind == "keyword":
                self._by_keyword.setdefault(normalize(rule.pattern), rule)  # the first rule of a keyword wins
            else:
                pattern = _fold_pattern(rule.pattern)
                compiled = _compile_regex(pattern)
                leads = () if compiled.flags & regex.IGNORECASE else _leads(pattern)
                self._regexes.append((compiled, _reach(pattern), leads, rule))
        self._keywords = re.compile(_keywords_pattern(self._by_keyword)) if self._by_keyword else None
        self._keyword_reach = max(map(len, self._by_keyword), default=0)
        # How far before the new text of a stream a match may start.
        self.reach = max([self._keyword_reach, *(reach for _, reach, _, _ in self._regexes)])

    def __bool__(self) -> bool:
        return bool(self._by_keyword or self._regexes)

    def check(self, text: str) -> Verdict:
        return self.scan(fold(text), 0, final=True)

    def scan(self, text: str, new: int, final: bool) -> Verdict:
        """The first rule with a match that reaches text[new:] (each rule looks back as far as its
        longest match); earlier characters are context for the boundaries only. When not final, a
        match that _may_grow waits for more text."""
        if self._keywords is not None:
            pos = max(0, new - self._keyword_reach)
            while (match := self._keywords.search(text, pos)) is not None:
                if final or not _may_grow(text, match):
                    return _blocked(self._by_keyword[match.group()])
                pos = match.start() + 1
        for pattern, reach, leads, rule in self._regexes:
            start = max(0, new - reach)
            if leads and all(text.find(lead, start) < 0 for lead in leads):
                continue
            try:
                matched = _regex_matches(pattern, text, start, final, time.monotonic() + self._timeout)
            except TimeoutError:
                log.warning("moderation rule %s ran past its %d ms budget on %d characters; it counts as a match",
                            rule.id, round(self._timeout * 1000), len(text) - start)
                return Verdict(False, "rules", rule.id, rule.category, timed_out=True)
            if matched:
                return _blocked(rule)
        return ALLOWED


def _regex_matches(pattern: regex.Pattern[str], text: str, start: int, final: bool, deadline: float) -> bool:
    """Whether a match reaches text[start:], span by span; TimeoutError once `deadline` (monotonic) passes."""
    end = len(text)
    while True:
        stop = min(start + REGEX_SPAN, end)
        pos = start
        while (match := pattern.search(text, pos, stop, timeout=max(0.0, deadline - time.monotonic()))) is not None:
            # A lookahead cannot see past a span's end: the overlapping next span judges that match.
            if not match.end() == stop < end and (final or not _may_grow(text, match)):
                return True
            pos = match.end() if match.end() > match.start() else match.start() + 1
        if stop >= end:
            return False
        start = stop - WINDOW
