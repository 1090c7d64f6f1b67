"""XSS payloads that message rendering (and whatever shows or exports messages) must render inert.

Convention: every payload that would run JavaScript does so by calling ``window.__xss(<n>)`` or by assigning
``window.__xss = <n>`` (never ``alert``), where ``<n>`` is unique to that payload. A browser test installs
``RECORDER_JS`` before the page's own scripts (e.g. Playwright's ``page.add_init_script(RECORDER_JS)``), shows
every payload, then asserts ``page.evaluate("window.__xssCalls")`` is empty; ``payload_number`` tells which
payload fired. Unit tests (tests/unit/test_rendering.py) check the rendered HTML's tree instead.
"""
from __future__ import annotations

import base64
import re

MARKER = "__xss"

# Records calls and assignments alike, and cannot be replaced by a payload that assigns window.__xss.
RECORDER_JS = """
(() => {
  const calls = [];
  const record = (n) => { calls.push(String(n)); };
  Object.defineProperty(window, "__xss", {
    configurable: false,
    get: () => record,
    set: (value) => { calls.push("set:" + String(value)); },
  });
  Object.defineProperty(window, "__xssCalls", { configurable: false, get: () => calls.slice() });
})();
"""

PAYLOADS: list[str] = [
    # Script tags
    "<script>window.__xss(1)</script>",
    "<ScRiPt>window.__xss(2)</sCrIpT>",
    "<scr<script>ipt>window.__xss(3)</scr</script>ipt>",
    "> <script>window.__xss(4)</script>",
    "- <script>window.__xss(5)</script>",
    # Event handlers
    "<img src=x onerror=window.__xss(6)>",
    "<svg onload=window.__xss(7)>",
    "<body onload=window.__xss(8)>",
    "<details open ontoggle=window.__xss(9)>",
    '<iframe srcdoc="&lt;script&gt;parent.window.__xss(10)&lt;/script&gt;"></iframe>',
    "<input autofocus onfocus=window.__xss(11)>",
    '<video><source onerror="window.__xss(12)"></video>',
    "<marquee onstart=window.__xss(13)>x</marquee>",
    "<xss onpointerenter=window.__xss(14)>hover me</xss>",
    '<img src=x onerror="window.__xss=15">',
    # javascript: links written in Markdown
    "[x](javascript:window.__xss(16))",
    "[x](jav&#x61;script:window.__xss(17))",
    "[x](&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;window.__xss(18))",
    "[x](javascript&colon;window.__xss(19))",
    "[x](<java\tscript:window.__xss(20)>)",
    "[x](<java\nscript:window.__xss(21)>)",
    "[x](JaVaScRiPt:window.__xss(22))",
    "[x](%6Aavascript:window.__xss(23))",
    "[x](javascript://%0Awindow.__xss(24))",
    '[x](javascript:window.__xss(25) "title")',
    "[x](<javascript:window.__xss(26)>)",
    "[x][evil]\n\n[evil]: javascript:window.__xss(27)",
    "<javascript:window.__xss(28)>",
    "- [x](javascript:window.__xss(29))",
    # javascript: links written in HTML
    '<a href="javascript:window.__xss(30)">x</a>',
    '<a href=" java&#x09;script:window.__xss(31)">x</a>',
    '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;window.__xss(32)">x</a>',
    "<IMG SRC=javascript:window.__xss(33)>",
    # data: and vbscript: URLs
    "[x](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX194c3MoMzQpPC9zY3JpcHQ+)",
    '<a href="data:text/html,<script>window.__xss(35)</script>">x</a>',
    "[x](vbscript:window.__xss(36))",
    "![x](data:image/svg+xml,<svg onload=window.__xss(37)>)",
    # SVG
    "<svg><script>window.__xss(38)</script></svg>",
    '<svg><a xlink:href="javascript:window.__xss(39)"><text x="20" y="20">x</text></a></svg>',
    "<svg><style><img src=x onerror=window.__xss(40)></style></svg>",
    # MathML tricks and TeX that tries to inject
    "<math><mtext><table><mglyph><style><img src=x onerror=window.__xss(41)>",
    '<math href="javascript:window.__xss(42)">x</math>',
    r"$\href{javascript:window.__xss(43)}{x}$",
    "$<img src=x onerror=window.__xss(44)>$",
    r"$$\text{<script>window.__xss(45)</script>}$$",
    r"\(\href{javascript:window.__xss(46)}{x}\)",
    "\\[\n\\text{<img src=x onerror=window.__xss(47)>}\n\\]",
    r"$$\style{background:url(javascript:window.__xss(48))}{x}$$",
    r'$\class{" onmouseover="window.__xss(49)}{x}$',
    r"$\mbox{</math><img src=x onerror=window.__xss(50)>}$",
    # Markdown image and link tricks
    '![x](x" onerror="window.__xss(51))',
    "![x](javascript:window.__xss(52))",
    '[x](https://example.com" onmouseover="window.__xss(53))',
    '<https://example.com" onmouseover="window.__xss(54)>',
    # HTML entities that must stay text
    "&lt;script&gt;window.__xss(55)&lt;/script&gt;",
    "&#60;script&#62;window.__xss(56)&#60;/script&#62;",
    # Elements that load, redirect, submit or embed
    "<style>*{background:url('javascript:window.__xss(57)')}</style>",
    '<link rel=stylesheet href="javascript:window.__xss(58)">',
    '<meta http-equiv="refresh" content="0;url=javascript:window.__xss(59)">',
    '<base href="javascript:window.__xss(60)//">',
    '<form action="javascript:window.__xss(61)"><button>go</button></form>',
    '<object data="javascript:window.__xss(62)"></object>',
    '<embed src="javascript:window.__xss(63)">',
    "<template><img src=x onerror=window.__xss(64)></template>",
    '<div style="background:url(javascript:window.__xss(65))">x</div>',
    # Breaking out of attributes and templates
    '"><script>window.__xss(66)</script>',
    "'><img src=x onerror=window.__xss(67)>",
    "{{constructor.constructor('window.__xss(68)')()}}",
    '<!--<img src="--><img src=x onerror=window.__xss(69)//">',
    '<noscript><p title="</noscript><img src=x onerror=window.__xss(70)>">',
    # Code that tries to leave its block
    '```"><img src=x onerror=window.__xss(71)>\ncode\n```',
    "```python\n</code></pre><script>window.__xss(72)</script>\n```",
    "`<script>window.__xss(73)</script>`",
    "| a |\n|---|\n| <img src=x onerror=window.__xss(74)> |",
    # Polyglot (after 0xsobky's)
    "jaVasCript:/*-/*`/*\\`/*'/*\"/**/(/* */oNcliCk=window.__xss(75) )//%0D%0A%0d%0a//</stYle/</titLe/"
    "</teXtarEa/</scRipt/--!>\\x3csVg/<sVg/oNloAd=window.__xss(75)//>\\x3e",
]

_NUMBER_RE = re.compile(r"__xss(?:\(|\s*=\s*)(\d+)")
_BASE64_RE = re.compile(r"base64,([A-Za-z0-9+/=]+)")


def payload_number(payload: str) -> int | None:
    """The number a payload reports through window.__xss (looking inside base64 data: URLs too), else None."""
    decoded = [base64.b64decode(chunk).decode("utf-8", "replace") for chunk in _BASE64_RE.findall(payload)]
    for text in (payload, *decoded):
        match = _NUMBER_RE.search(text)
        if match:
            return int(match.group(1))
    return None
