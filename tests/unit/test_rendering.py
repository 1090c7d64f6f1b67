"""Messages render as safe HTML: Markdown, highlighted code, MathML, and nothing that can run or load."""
from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

import pytest

from chat.conversations.rendering import MATHML_ATTRIBUTES, MATHML_TAGS, TEXT_TAGS, render_markdown, render_plain
from tests.support.xss_corpus import PAYLOADS, payload_number


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parents: tuple[str, ...]


class Tree(HTMLParser):
    """The elements of an HTML fragment, as a browser's tokenizer sees their names and attribute values."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.text: list[str] = []
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {name: value or "" for name, value in attrs}, tuple(self._open)))
        if tag not in {"br", "hr"}:
            self._open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {name: value or "" for name, value in attrs}, tuple(self._open)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def tags(self) -> list[str]:
        return [element.tag for element in self.elements]

    def find(self, tag: str) -> list[Element]:
        return [element for element in self.elements if element.tag == tag]


def parse(html: str) -> Tree:
    tree = Tree()
    tree.feed(html)
    tree.close()
    return tree


FORBIDDEN_TAGS = {
    "script", "iframe", "frame", "frameset", "object", "embed", "style", "link", "meta", "base", "form", "img",
    "svg", "input", "button", "textarea", "video", "audio", "source", "template", "noscript", "mglyph",
    "annotation-xml", "maction",
}  # fmt: skip
URL_ATTRIBUTES = {"href", "src", "xlink:href", "action", "formaction", "data", "srcdoc", "background", "poster"}
ALLOWED_ATTRIBUTES = {"class", "data-lang", "href", "rel", "align", "start"} | MATHML_ATTRIBUTES
_IGNORED_IN_URL = re.compile(r"[\x00-\x20\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*:")


def is_safe_url(value: str) -> bool:
    url = _IGNORED_IN_URL.sub("", value).lower()
    return url.startswith(("http:", "https:", "mailto:", "#")) or not _SCHEME.match(url)


def assert_inert(html: str) -> None:
    tree = parse(html)
    for element in tree.elements:
        assert element.tag not in FORBIDDEN_TAGS, element
        assert element.tag in TEXT_TAGS | MATHML_TAGS, element
        for name, value in element.attrs.items():
            assert not name.startswith("on"), element
            assert name != "style", element
            assert name in ALLOWED_ATTRIBUTES, element
            if name in URL_ATTRIBUTES:
                assert is_safe_url(value), element
        if element.tag in MATHML_TAGS:
            assert "href" not in element.attrs, element
        if element.tag == "a":
            assert element.attrs.get("rel") == "noopener nofollow", element


# Markdown


def test_it_renders_headings_and_bulleted_and_numbered_lists():
    message = "# Title\n\n## Part\n\n- one\n- two\n\n3. three\n4. four"

    tree = parse(render_markdown(message))

    assert tree.tags()[:2] == ["h1", "h2"]
    assert len(tree.find("ul")) == 1 and len(tree.find("ol")) == 1
    assert tree.find("ol")[0].attrs == {"start": "3"}
    assert len(tree.find("li")) == 4


def test_it_renders_a_table_with_alignment_as_an_attribute_not_a_style():
    message = "| left | right |\n|:-----|------:|\n| a | 1 |"

    html = render_markdown(message)

    tree = parse(html)
    assert [element.tag for element in tree.elements if element.tag in {"table", "thead", "tbody"}] == [
        "table",
        "thead",
        "tbody",
    ]
    assert [cell.attrs.get("align") for cell in tree.find("th") + tree.find("td")] == ["left", "right"] * 2
    assert "style" not in html


def test_it_renders_strikethrough():
    html = render_markdown("~~gone~~ kept")

    assert "<s>gone</s> kept" in html


def test_a_single_newline_is_a_line_break():
    html = render_markdown("first line\nsecond line")

    assert html == "<p>first line<br>second line</p>"


def test_blocks_and_breaks_are_not_followed_by_newlines_which_pre_wrap_would_show():
    message = "# T\n\none\ntwo  \nthree\n\n- a\n- b\n\n> q\n\n| a |\n|---|\n| 1 |\n\n$$x$$\n\n---"

    html = render_markdown(message)

    assert "\n" not in html


def test_code_keeps_its_newlines():
    html = render_markdown("```\nfirst\n\nthird\n```")

    assert "<code>first\n\nthird\n</code>" in html


def test_raw_html_is_shown_as_text_not_interpreted():
    html = render_markdown("Use <b>bold</b> and <div class='x'>blocks</div>")

    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    assert parse(html).tags() == ["p"]


def test_html_entities_stay_text():
    html = render_markdown("&lt;script&gt; and &#60;b&#62;")

    assert parse(html).tags() == ["p"]
    assert "".join(parse(html).text).strip() == "<script> and <b>"


def test_chinese_text_passes_through_unchanged():
    message = "你好，世界！这是一个测试：「数学」与代码。"

    assert render_markdown(message) == f"<p>{message}</p>"


# Code


def test_it_highlights_a_python_fence_with_classes_not_styles():
    message = "```python\ndef greet(name):\n    return f'hi {name}'\n```"

    html = render_markdown(message)

    assert '<span class="k">def</span>' in html
    assert '<span class="nf">greet</span>' in html
    assert not re.search(r"\sstyle=", html)


def test_a_code_block_is_a_div_with_its_language_around_a_pre_for_the_copy_button():
    html = render_markdown("```python\nprint(1)\n```")

    assert html.startswith('<div class="code-block" data-lang="python"><pre class="highlight"><code>')
    assert html.endswith("</code></pre></div>")
    pre = parse(html).find("pre")[0]
    assert pre.parents == ("div",)


def test_an_unknown_language_is_kept_as_a_label_but_not_highlighted():
    html = render_markdown("```mermaid\ngraph TD; A-->B\n```")

    assert '<div class="code-block" data-lang="mermaid">' in html
    assert "<span" not in html
    assert "A--&gt;B" in html


def test_a_fence_without_a_language_is_not_guessed():
    html = render_markdown("```\nimport os\ndef f():\n    return os.name\n```")

    assert '<div class="code-block" data-lang="">' in html
    assert "<span" not in html


def test_a_language_alias_is_looked_up_by_name_and_lowercased():
    html = render_markdown("```JS\nconst x = 1;\n```")

    assert 'data-lang="js"' in html
    assert '<span class="kd">const</span>' in html


def test_indented_code_gets_the_same_block_structure():
    html = render_markdown("text\n\n    x = 1\n")

    assert '<div class="code-block" data-lang=""><pre class="highlight"><code>x = 1\n</code></pre></div>' in html


def test_a_fence_language_that_tries_to_break_out_of_the_attribute_is_dropped():
    html = render_markdown('```"><img src=x onerror=alert(1)>\nx\n```')

    assert '<div class="code-block" data-lang="">' in html
    assert_inert(html)


def test_code_inside_a_fence_is_escaped():
    html = render_markdown("```html\n<script>alert(1)</script>\n```")

    assert "<script" not in html
    assert "&lt;" in html


def test_inline_code_is_escaped():
    html = render_markdown("Call `a < b && <tag>` now")

    assert "<code>a &lt; b &amp;&amp; &lt;tag&gt;</code>" in html


# Links and images


def test_links_get_rel_noopener_nofollow():
    html = render_markdown("[docs](https://example.com/docs) and <https://example.org>")

    links = parse(html).find("a")
    assert [link.attrs for link in links] == [
        {"href": "https://example.com/docs", "rel": "noopener nofollow"},
        {"href": "https://example.org", "rel": "noopener nofollow"},
    ]


def test_mailto_and_relative_links_survive():
    html = render_markdown("[mail](mailto:a@example.com) [here](#part) [page](/help)")

    assert [link.attrs["href"] for link in parse(html).find("a")] == ["mailto:a@example.com", "#part", "/help"]


@pytest.mark.parametrize(
    "message",
    [
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](jav&#x61;script:alert(1))",
        "[x](<java\tscript:alert(1)>)",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "[x](data:image/png;base64,iVBORw0KGgo=)",
        "[x](vbscript:msgbox(1))",
        "[x](file:///etc/passwd)",
        "<javascript:alert(1)>",
        "[x][ref]\n\n[ref]: javascript:alert(1)",
    ],
)
def test_a_link_with_a_scheme_other_than_http_https_or_mailto_is_not_a_link(message):
    html = render_markdown(message)

    assert parse(html).find("a") == []
    assert_inert(html)


def test_a_markdown_image_becomes_a_link_and_loads_nothing():
    html = render_markdown("![a *cat* photo](https://example.com/cat.png)")

    tree = parse(html)
    assert tree.find("img") == []
    assert tree.find("a")[0].attrs["href"] == "https://example.com/cat.png"
    assert "".join(tree.text).strip() == "a cat photo"


def test_an_image_without_alt_text_links_with_its_address_as_the_text():
    html = render_markdown("![](https://example.com/x.png)")

    assert "".join(parse(html).text).strip() == "https://example.com/x.png"


def test_an_image_with_a_dangerous_address_is_left_as_text():
    html = render_markdown("![x](javascript:alert(1))")

    assert parse(html).tags() == ["p"]


# Math


def test_dollar_math_is_inline_mathml():
    html = render_markdown("Area $x^2$ here")

    tree = parse(html)
    math = tree.find("math")[0]
    assert math.attrs["display"] == "inline"
    assert math.parents == ("p",)
    assert tree.find("msup")


def test_double_dollar_math_on_its_own_line_is_a_display_block_with_a_fraction():
    html = render_markdown("$$\\frac{a}{b}$$")

    tree = parse(html)
    assert tree.find("math")[0].attrs["display"] == "block"
    assert tree.find("math")[0].parents == ("div",)
    assert tree.find("mfrac")


def test_double_dollar_math_spanning_lines_right_after_text_is_display_math():
    html = render_markdown("The ratio:\n$$\n\\frac{a}{b}\n$$")

    tree = parse(html)
    assert tree.find("math")[0].attrs["display"] == "block"
    assert tree.find("mfrac")


def test_backslash_parenthesis_math_is_inline():
    html = render_markdown("so \\(a+b\\) holds")

    tree = parse(html)
    assert tree.find("math")[0].attrs["display"] == "inline"
    assert [element.tag for element in tree.elements if element.tag in {"mi", "mo"}] == ["mi", "mo", "mi"]


def test_backslash_bracket_math_is_display_math():
    html = render_markdown("\\[\\sqrt{x}\\]")

    tree = parse(html)
    assert tree.find("math")[0].attrs["display"] == "block"
    assert tree.find("msqrt")


def test_backslash_bracket_math_may_follow_a_line_of_text_directly():
    html = render_markdown("The root:\n\\[\n\\sqrt{x}\n\\]\nDone.")

    tree = parse(html)
    assert tree.tags()[0] == "p" and tree.find("msqrt")
    assert tree.tags()[-1] == "p"


def test_bracketed_text_at_the_start_of_a_line_is_not_mistaken_for_math():
    html = render_markdown("\\[1\\] Smith et al.")

    assert html == "<p>[1] Smith et al.</p>"


@pytest.mark.parametrize(
    "message",
    [
        "It costs $5 and $10 today",
        "between $20 and $30.",
        "from $5-$10",
        "either $5/$6",
        "only $5",
        "I have $ 3 and $ 4",
    ],
)
def test_currency_amounts_stay_text_with_their_dollar_signs(message):
    html = render_markdown(message)

    assert "<math" not in html
    assert html == f"<p>{message}</p>"


def test_a_matrix_renders_as_a_math_table():
    html = render_markdown("$$\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}$$")

    tree = parse(html)
    assert len(tree.find("mtr")) == 2 and len(tree.find("mtd")) == 4


def test_sums_accents_and_text_render_with_allowed_mathml():
    message = "$$\\sum_{i=1}^{n} \\hat{x}_i + \\text{ok} \\quad \\boxed{y}$$"

    html = render_markdown(message)

    tree = parse(html)
    assert {"munderover", "mover", "mtext", "menclose"} <= set(tree.tags())
    assert tree.find("mover")[0].attrs == {"accent": "true"}
    assert_inert(html)


@pytest.mark.parametrize("message", ["$\\frac{a$", "$x^$", "$$\\left($$", "\\[\\begin{matrix}\\]", "$\\sqrt$"])
def test_broken_tex_does_not_raise(message):
    html = render_markdown(message)

    assert_inert(html)


def test_tex_the_converter_rejects_is_shown_as_escaped_code():
    html = render_markdown("see $x^$ and $<b>$")

    assert '<code class="math-error">x^</code>' in html
    assert "<b>" not in html


def test_mathml_never_carries_links_classes_or_styles_from_tex():
    message = "$\\href{https://example.com}{x}$ $\\class{big}{y}$ $\\style{color:red}{z}$ $\\rule{1em}{1em}$"

    html = render_markdown(message)

    for element in parse(html).elements:
        assert not {"href", "class", "style", "mathbackground"} & set(element.attrs), element


def test_tex_text_cannot_inject_markup():
    html = render_markdown("$$\\text{<script>alert(1)</script><b>x</b>}$$")

    tree = parse(html)
    assert "script" not in tree.tags() and "b" not in tree.tags()
    assert "<script>alert(1)</script><b>x</b>" in "".join(tree.text)


# Robustness


@pytest.mark.parametrize(
    "message",
    [
        "",
        "\ud800 lone surrogate",
        "nul \x00 byte",
        "$" + "{" * 3000 + "$",
        ">" * 3000 + " deep quote",
        "- " * 500 + "deep list",
        "```",
        "\\[\nnever closed",
        "[" * 2000,
        "&#0; &#xD800; &#x110000;",
        "| a |\n|---|\n" + "| b |\n" * 200,
    ],
    ids=lambda message: repr(message[:20]),
)
def test_rendering_never_raises_on_odd_input(message):
    html = render_markdown(message)

    assert isinstance(html, str)
    assert_inert(html)


def test_the_same_message_is_rendered_once_and_then_cached():
    message = "cache me: `x` and $y$"

    first = render_markdown(message)
    second = render_markdown(message)

    assert first is second


def test_no_style_attribute_survives_in_a_message_using_every_feature():
    message = (
        "# T\n\n| a | b |\n|:-:|--:|\n| 1 | 2 |\n\n```python\nx = 1  # c\n```\n\n"
        "$$\\color{red}{x} \\displaystyle\\sum_a^b \\Large y$$\n\n> ~~q~~ [l](https://e.com) ![i](https://e.com/i.png)"
    )

    html = render_markdown(message)

    assert not re.search(r"\sstyle=", html)
    assert_inert(html)


# XSS corpus


def test_the_xss_corpus_has_at_least_40_payloads_each_reporting_a_distinct_number():
    numbers = [payload_number(payload) for payload in PAYLOADS]

    assert len(PAYLOADS) >= 40
    assert None not in numbers
    assert len(set(numbers)) == len(numbers)


@pytest.mark.parametrize("payload", PAYLOADS, ids=[f"xss{payload_number(payload)}" for payload in PAYLOADS])
def test_every_xss_payload_renders_inert(payload):
    html = render_markdown(payload)

    assert_inert(html)
    assert "<script" not in html.lower()


# Plain text


def test_render_plain_escapes_markup_and_keeps_line_breaks():
    html = render_plain("a <b>&\r\nc\nd")

    assert html == "a &lt;b&gt;&amp;<br>\nc<br>\nd"


def test_render_plain_does_not_interpret_markdown():
    assert render_plain("**not bold** $x$") == "**not bold** $x$"


def test_it_renders_bracketed_display_math_in_the_middle_of_a_line_but_leaves_citations_alone():
    # Given display math written inline, as models often do, and a citation
    html = render_markdown(r"so that \[\frac{a}{b}\] holds; see \[1\] for details")
    # Then the math is a display-mode <math> inside the paragraph, and the citation stays text
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in html and "<mfrac>" in html
    assert "see [1] for details" in html
