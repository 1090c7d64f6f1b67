"""The text normaliser of moderation: the folded form (NFKC, casefolded, invisible characters gone) rules match."""
from __future__ import annotations

import re
import unicodedata

# Format characters that render as nothing and are used to split a word for the filter (soft hyphen,
# zero-width space, joiners, word joiner, invisible operators, BOM).
INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200d\u2060-\u2064\ufeff]")
# Whitespace other than a single space: collapsing only these is faster than rewriting every space.
_SPACES = re.compile(r"[^\S ]\s*| \s+")
# Full-width ASCII and the ideographic space, common in Chinese text: mapped here so that most text
# passes NFKC's quick check instead of being normalized character by character (5 times slower).
_WIDE = re.compile("[\u3000\uff01-\uff5e]")
_NARROW = {chr(code): unicodedata.normalize("NFKC", chr(code)) for code in (0x3000, *range(0xFF01, 0xFF5F))}


def fold(text: str) -> str:
    """normalize() without the final strip, so pieces of a stream can be folded one after another."""
    text = INVISIBLE.sub("", text)
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
    return fold(text).strip()
