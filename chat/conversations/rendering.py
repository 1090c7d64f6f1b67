"""Turns chat messages (Markdown with code and TeX) into sanitized HTML that is safe to put on the page."""
from __future__ import annotations

import hashlib
import html
import logging
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from urllib.parse import unquote
from xml.etree.ElementTree import Element

import nh3
from django.conf import settings
from django.utils.translation import gettext as _
from latex2mathml.converter import convert_to_element
from markdown_it import MarkdownIt
from markdown_it.common.utils import unescapeAll
from markdown_it.renderer import RendererHTML
from markdown_it.rules_block import StateBlock
from markdown_it.rules_core import StateCore
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from mdit_py_plugins.dollarmath import dollarmath_plugin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

log = logging.getLogger(__name__)

# static/chat/highlight.css was generated from these two styles (its header says how).
PYGMENTS_STYLE_LIGHT = "default"
PYGMENTS_STYLE_DARK = "github-dark"

ALLOWED_URL_SCHEMES = frozenset({"http", "https", "mailto"})

TEXT_TAGS = frozenset(
    {
        "p", "br", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
        "h1", "h2", "h3", "h4", "h5", "h6", "hr", "a", "table", "thead", "tbody", "tr", "th", "td", "span", "div",
    }
)  # fmt: skip

# Everything latex2mathml 3.81 emits (checked against fractions, matrices, arrays, roots, sums, accents,
# \text, \boxed, \phantom, \hspace, font and size commands), plus the semantics wrapper. Deliberately absent:
# maction (interactive), mglyph (a mutation-XSS staple) and annotation-xml (an HTML integration point).
MATHML_TAGS = frozenset(
    {
        "math", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msup", "msub", "msubsup", "mfrac", "msqrt",
        "mroot", "munder", "mover", "munderover", "mtable", "mtr", "mtd", "mstyle", "mpadded", "mphantom",
        "menclose", "semantics", "annotation",
    }
)  # fmt: skip

# Presentation attributes only. latex2mathml also writes href, class and style (from \href, \class and
# \style), and mathbackground (from \rule): none of those may reach the page.
MATHML_ATTRIBUTES = frozenset(
    {
        "display", "mathvariant", "mathsize", "mathcolor", "stretchy", "fence", "separator", "lspace", "rspace",
        "accent", "accentunder", "columnalign", "columnlines", "columnspacing", "rowlines", "rowspacing",
        "linethickness", "xmlns", "movablelimits", "minsize", "maxsize", "width", "height", "depth", "voffset",
        "notation", "form", "largeop", "symmetric", "displaystyle", "scriptlevel", "linebreak",
    }
)  # fmt: skip

_CLEANER = nh3.Cleaner(
    tags=set(TEXT_TAGS | MATHML_TAGS),
    clean_content_tags={"script", "style"},
    attributes={
        "a": {"href"},
        "span": {"class"},
        "div": {"class", "data-lang"},
        "code": {"class"},
        "pre": {"class"},
        "ol": {"start"},
        **{tag: set(MATHML_ATTRIBUTES) for tag in MATHML_TAGS},
    },
    tag_attribute_values={
        "th": {"align": {"left", "center", "right"}},
        "td": {"align": {"left", "center", "right"}},
    },
    link_rel="noopener nofollow",
    url_schemes=set(ALLOWED_URL_SCHEMES),
)

_SCHEME_RE = re.compile(r"^([a-z][a-z0-9+.\-]*):")
# Browsers ignore these inside a scheme ("java\tscript:"), so they must not hide one from the check.
_IGNORED_IN_URL_RE = re.compile(r"[\x00-\x20\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
# A language name goes into an attribute and a lexer lookup; anything fancier is not a language.
_LANGUAGE_RE = re.compile(r"[A-Za-z0-9_+#.\-]{1,40}")

_FORMATTER = HtmlFormatter(nowrap=True)


class RenderCache:
    """Rendered HTML by the text's digest, least recently used first out, bounded in bytes (not entries): a
    cache counted in entries let a few thousand huge answers pin gigabytes. Shared by a process's threads."""

    ENTRY_OVERHEAD = 200  # the digest key, the dict slot and the list link, roughly

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    @classmethod
    def cost(cls, value: str) -> int:
        return sys.getsizeof(value) + cls.ENTRY_OVERHEAD

    def get(self, key: bytes) -> str | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: bytes, value: str) -> None:
        cost = self.cost(value)
        if cost > self.max_bytes:
            return  # would evict everything else for one entry
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= self.cost(old)
            self._entries[key] = value
            self.bytes += cost
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= self.cost(evicted)

    def __len__(self) -> int:
        return len(self._entries)


# Pages re-render the same finished messages; RENDER_CACHE_BYTES bounds what that keeps per process.
RENDER_CACHE = RenderCache(settings.RENDER_CACHE_BYTES)


def render_markdown(text: str) -> str:
    """Render a chat message's Markdown as sanitized HTML; never raises. Past RENDER_MAX_CHARS of text, or
    RENDER_MAX_HTML_CHARS of HTML, it is escaped plain text with a notice: Markdown and Pygments cost time and
    bytes in proportion to the text (code ~10-25× as HTML), and an imported answer may hold 200,000 characters."""
    if len(text) > settings.RENDER_MAX_CHARS:
        return _too_long_to_format(text)  # cheap, and not cached: the notice is in the reader's language
    key = RENDER_CACHE.key(text)
    rendered = RENDER_CACHE.get(key)
    if rendered is None:
        rendered = _render(text)
        if len(rendered) > settings.RENDER_MAX_HTML_CHARS:
            rendered = _TOO_LONG  # remembered as such, so the next view skips the work
        RENDER_CACHE.put(key, rendered)
    return _too_long_to_format(text) if rendered == _TOO_LONG else rendered


_TOO_LONG = "\x00"  # the cache's mark for "too long to format" (sanitized HTML never holds a NUL)


def _render(text: str) -> str:
    text = _valid_unicode(text)
    try:
        return _CLEANER.clean(_MD.render(text))
    except Exception:
        # A message must always show; a parser bug degrades it to plain text instead of a broken page.
        log.exception("Markdown rendering failed; showing the message as plain text")
        return f"<p>{render_plain(text)}</p>"


def _too_long_to_format(text: str) -> str:
    notice = html.escape(_("This message is too long to format; it is shown as plain text."))
    plain = html.escape(_valid_unicode(text), quote=False)
    return f'<p class="render-notice">{notice}</p><div class="plain-text">{plain}</div>'


def render_plain(text: str) -> str:
    """Escape text for HTML, keeping its line breaks as <br>."""
    escaped = html.escape(_valid_unicode(text).replace("\r\n", "\n").replace("\r", "\n"))
    return escaped.replace("\n", "<br>\n")


def _valid_unicode(text: str) -> str:
    # Lone surrogates (possible in Python strings, not in UTF-8) would make nh3 raise.
    return text.encode("utf-8", "replace").decode("utf-8")


def _is_allowed_url(url: str) -> bool:
    """Links Markdown may create: http, https, mailto and relative ones (the sanitizer checks again)."""
    # markdown-it hands over a percent-encoded URL; decoding first means "java%09script:" cannot slip through.
    match = _SCHEME_RE.match(_IGNORED_IN_URL_RE.sub("", unquote(html.unescape(url))).lower())
    return match is None or match.group(1) in ALLOWED_URL_SCHEMES


def _lexer_for(language: str) -> Lexer | None:
    # Only by name: guessing from the content is slow and often wrong.
    try:
        return get_lexer_by_name(language)
    except ClassNotFound:
        return None


def _code_block_html(code: str, language: str) -> str:
    """The structure the page's Copy button relies on: div.code-block[data-lang] > pre.highlight > code."""
    if not _LANGUAGE_RE.fullmatch(language):
        language = ""
    language = language.lower()
    lexer = _lexer_for(language) if language else None
    body = highlight(code, lexer, _FORMATTER) if lexer is not None else html.escape(code)
    return (
        f'<div class="code-block" data-lang="{html.escape(language)}">'
        f'<pre class="highlight"><code>{body}</code></pre></div>'
    )


def _render_fence(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    info = unescapeAll(tokens[idx].info).strip()
    return _code_block_html(tokens[idx].content, info.split(maxsplit=1)[0] if info else "")


def _render_code_block(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return _code_block_html(tokens[idx].content, "")


def _render_image(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    # A page must not fetch URLs chosen by model output (tracking pixels, exfiltration), so an image
    # becomes a link the reader may choose to follow.
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env) or src
    return f'<a href="{html.escape(src)}">{html.escape(alt)}</a>'


def _serialize_mathml(element: Element) -> str:
    # latex2mathml's own serializer unescapes its output, so \text{<script>} would come out as a live tag;
    # this one escapes text and attributes properly. Symbols are stored as entity strings ("&#x0003C;"),
    # hence the unescape before escaping.
    attributes = "".join(f' {name}="{html.escape(str(value))}"' for name, value in element.attrib.items())
    children = "".join(_serialize_mathml(child) for child in element)
    text = html.escape(html.unescape(element.text or ""), quote=False)
    tail = html.escape(html.unescape(element.tail or ""), quote=False)
    return f"<{element.tag}{attributes}>{text}{children}</{element.tag}>{tail}"


def _tex_to_html(tex: str, display: bool) -> str:
    tex = tex.strip()
    try:
        return _serialize_mathml(convert_to_element(tex, display="block" if display else "inline"))
    except Exception:  # latex2mathml raises many kinds (its own, IndexError, RecursionError, ...)
        return f'<code class="math-error">{html.escape(tex)}</code>'


def _render_math_inline(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return _tex_to_html(tokens[idx].content, display=False)


def _render_math_display_in_paragraph(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return _tex_to_html(tokens[idx].content, display=True)


def _render_math_block(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    if not tokens[idx].content.strip():
        return ""  # "$$" lines with nothing between them
    return f'<div class="math-block">{_tex_to_html(tokens[idx].content, display=True)}</div>'


def _math_inline_parens(state: StateInline, silent: bool) -> bool:
    r"""\(…\) inline math (mdit's texmath could do it, but its rule names collide with dollarmath's)."""
    start = state.pos
    if not state.src.startswith("\\(", start):
        return False
    end = state.src.find("\\)", start + 2)
    if end == -1 or not state.src[start + 2 : end].strip():
        return False
    if not silent:
        token = state.push("math_inline", "math", 0)
        token.content = state.src[start + 2 : end]
        token.markup = "\\("
    state.pos = end + 2
    return True


def _math_display_brackets_inline(state: StateInline, silent: bool) -> bool:
    r"""\[…\] in the middle of a line: display math, when its content looks like TeX ("\[1\]" stays a citation)."""
    start = state.pos
    if not state.src.startswith("\\[", start):
        return False
    end = state.src.find("\\]", start + 2)
    content = state.src[start + 2 : end] if end != -1 else ""
    if not content.strip() or not any(mark in content for mark in "\\^_={}+"):
        return False
    if not silent:
        token = state.push("math_inline_double", "math", 0)
        token.content = content
        token.markup = "\\["
    state.pos = end + 2
    return True


def _math_block_brackets(state: StateBlock, start_line: int, end_line: int, silent: bool) -> bool:
    r"""\[…\] display math starting a line; it may interrupt a paragraph, as models write it right after text."""
    if state.sCount[start_line] - state.blkIndent >= 4:
        return False
    begin = state.bMarks[start_line] + state.tShift[start_line]
    first = state.src[begin : state.eMarks[start_line]]
    if not first.startswith("\\["):
        return False
    lines = [first[2:]]
    line = start_line
    while True:
        current = lines[-1].rstrip()
        closing = current.find("\\]")
        if closing != -1:
            # Text after the closing bracket means this is not a display block (e.g. "\[1\] Smith").
            if closing != len(current) - 2:
                return False
            break
        line += 1
        # TeX forbids blank lines in math, and an unclosed \[ must not swallow the rest of the message.
        if line >= end_line or state.isEmpty(line) or state.sCount[line] < state.blkIndent:
            return False
        lines.append(state.src[state.bMarks[line] + state.tShift[line] : state.eMarks[line]])
    content = "\n".join(lines).rstrip()[:-2]
    if not content.strip():
        return False
    if silent:
        return True
    token = state.push("math_block", "math", 0)
    token.block = True
    token.content = content
    token.markup = "\\["
    token.map = [start_line, line + 1]
    state.line = line + 1
    return True


def _table_alignment_as_attribute(state: StateCore) -> None:
    # markdown-it aligns cells with style="text-align:…", which the CSP (no 'unsafe-inline') would block
    # and the sanitizer removes; the align attribute is a presentational hint the CSP does not cover.
    for token in state.tokens:
        style = token.attrGet("style") if token.type in ("th_open", "td_open") else None
        if isinstance(style, str) and ":" in style:
            token.attrs.pop("style", None)
            token.attrSet("align", style.split(":", 1)[1].strip())


def _no_newlines_between_blocks(state: StateCore) -> None:
    # markdown-it puts a newline after block tags and <br>; the page shows messages with white-space: pre-wrap,
    # where each of those would be an extra blank line. Only code keeps its newlines (inside <pre>).
    for token in state.tokens:
        token.block = False


def _render_break(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    return "<br>" if options.breaks or tokens[idx].type == "hardbreak" else "\n"


def _build_markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])
    md.validateLink = _is_allowed_url  # type: ignore[method-assign]
    # No space inside the dollars and no digit outside them: "costs $5 and $10" stays text.
    dollarmath_plugin(md, allow_labels=False, allow_space=False, allow_digits=False, double_inline=True)
    md.inline.ruler.before("escape", "math_inline_parens", _math_inline_parens)
    md.inline.ruler.before("escape", "math_display_brackets_inline", _math_display_brackets_inline)
    md.block.ruler.before(
        "fence", "math_block_brackets", _math_block_brackets, {"alt": ["paragraph", "reference", "blockquote", "list"]}
    )
    md.core.ruler.push("table_alignment_as_attribute", _table_alignment_as_attribute)
    md.core.ruler.push("no_newlines_between_blocks", _no_newlines_between_blocks)
    md.add_render_rule("softbreak", _render_break)
    md.add_render_rule("hardbreak", _render_break)
    md.add_render_rule("fence", _render_fence)
    md.add_render_rule("code_block", _render_code_block)
    md.add_render_rule("image", _render_image)
    md.add_render_rule("math_inline", _render_math_inline)
    md.add_render_rule("math_inline_double", _render_math_display_in_paragraph)
    md.add_render_rule("math_block", _render_math_block)
    return md


_MD = _build_markdown()
