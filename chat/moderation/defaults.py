"""The moderation rules shipped with the site: conservative English and Chinese phrases for disallowed content."""
from __future__ import annotations

from chat.moderation.rules import Rule

# Phrases, never bare words: "kill the process", "this song is the bomb" and "炸弹" in a card game
# must pass. A rule's id is its place in its list ("default:violence-3", "default:violence-re-1") and
# audit records keep it: add rules at the end, and retire one by putting None in its place.


def _rules(category: str, kind: str, applies_to: str, patterns: list[str | None]) -> list[Rule]:
    prefix = f"default:{category}-" if kind == "keyword" else f"default:{category}-re-"
    return [Rule(f"{prefix}{n}", kind, pattern, category, applies_to)
            for n, pattern in enumerate(patterns, 1) if pattern is not None]


# Requests for (and answers with) instructions to make weapons capable of mass harm.
_VIOLENCE_KEYWORDS: list[str | None] = [
    "how to make a bomb",
    "how to build a bomb",
    "how to make a pipe bomb",
    "how to make explosives",
    "how to make napalm",
    "how to make a molotov cocktail",
    "how to make nerve gas",
    "how to make sarin",
    "how to make ricin",
    "how to make a ghost gun",
    "制造炸弹",
    "制作炸弹",
    "自制炸弹",
    "怎么做炸弹",
    "如何做炸弹",
    "制作炸药",
    "制造炸药",
    "自制炸药",
    "制作燃烧瓶",
    "制造毒气",
    "自制枪支",
]
# The same requests phrased as a question ("how do I build a pipe bomb?"); plain wording only. Each
# regex starts with a literal, so the matcher can skip ahead to it, and checks the edge before it
# with a lookbehind afterwards (\b would not separate Latin from Chinese).
_VIOLENCE_REGEXES: list[str | None] = [
    r"how (?<![a-z0-9]how )(?:do|can|would|should) (?:i|you|we|someone) (?:make|build|assemble) "
    r"(?:a |an |some )?(?:homemade |pipe |nail |car )?(?:bombs?|explosives?|explosive devices?)(?![a-z0-9])",
]

# Explicit requests for self-harm instructions.
_SELF_HARM_KEYWORDS: list[str | None] = [
    "how to kill myself",
    "how do i kill myself",
    "how can i kill myself",
    "way to kill myself",
    "ways to kill myself",
    "how to commit suicide",
    "way to commit suicide",
    "ways to commit suicide",
    "自杀方法",
    "自杀的方法",
    "怎么自杀",
    "如何自杀",
    "怎样自杀",
    "无痛自杀",
]

# Terms for sexual material involving children.
_CHILD_SAFETY_KEYWORDS: list[str | None] = [
    "child pornography",
    "child porn",
    "kiddie porn",
    "underage porn",
    "儿童色情",
    "幼女色情",
    "未成年人色情",
    "未成年色情",
]

# Secrets a model should never print: private keys and well-known API token formats (outputs only, so
# users may still paste their own key to ask about it). The text is casefolded, so lower case suffices.
_CREDENTIAL_REGEXES: list[str | None] = [
    r"-----begin (?:rsa |ec |dsa |openssh |encrypted )?private key-----",
    r"-----begin pgp private key block-----",
    r"(?:akia|asia)(?<![a-z0-9]....)[a-z0-9]{16}(?![a-z0-9])",  # AWS access key id
    r"gh[pousr]_(?<![a-z0-9]...._)[a-z0-9]{36}(?![a-z0-9])",  # GitHub token
    r"xox[abprs]-(?<![a-z0-9]....-)[a-z0-9-]{10,48}",  # Slack token
    r"aiza(?<![a-z0-9]aiza)[a-z0-9_-]{35}(?![a-z0-9_-])",  # Google API key
    r"sk_live_(?<![a-z0-9]sk_live_)[a-z0-9]{24,99}",  # Stripe secret key
    r"sk-(?<![a-z0-9_-]sk-)(?:proj-)?[a-z0-9_-]{32,200}",  # OpenAI-style secret key
]

DEFAULT_RULES: list[Rule] = [
    *_rules("violence", "keyword", "both", _VIOLENCE_KEYWORDS),
    *_rules("violence", "regex", "both", _VIOLENCE_REGEXES),
    *_rules("self-harm", "keyword", "both", _SELF_HARM_KEYWORDS),
    *_rules("child-safety", "keyword", "both", _CHILD_SAFETY_KEYWORDS),
    *_rules("credentials", "regex", "output", _CREDENTIAL_REGEXES),
]
