"""In Debian's Chromium: how the site looks and how it is used without a mouse, on a phone, in Chinese.

axe-core (tests/axe.py) audits the main pages in both themes and both languages; the other tests cover
what axe cannot judge: the theme toggle and its cookie, the language switch, IME composition, a 375 px
phone, keyboard-only use. The last one saves screenshots (ARTIFACTS/screenshots) for the release notes.
"""
from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import warnings

from tests.support.axe import run_axe
from tests.support.browser import ARTIFACTS, PASSWORD, BrowserTestCase

CONVERSATION_URL = re.compile(r".*/c/[0-9a-f-]{36}/$")
ANSWERS_DONE = ".message.assistant.done"
PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 800}

# The relative luminance (WCAG) of the body's computed background colour.
BODY_LUMINANCE = """
() => {
  const [r, g, b] = getComputedStyle(document.body).backgroundColor.match(/[\\d.]+/g).map(Number);
  const linear = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
}
"""

SKIP_LINKS_LEAD_SOMEWHERE = "[...document.querySelectorAll('a.skip-link')]" \
    ".every(a => document.getElementById(a.hash.slice(1)))"

# Whether the page scrolls sideways at its width, and if so, which elements stick out.
SIDEWAYS = """
() => {
  const width = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth <= width) return [];
  return [...document.querySelectorAll('body *')]
    .filter(el => el.getBoundingClientRect().right > width + 1)
    .map(el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (el.className ? '.' + el.className : '')
               + ' right=' + Math.round(el.getBoundingClientRect().right))
    .slice(0, 12);
}
"""

# Sends a synthetic Enter keydown to `selector` as an IME would while composing; returns whether the
# page let it through (true: not cancelled, so nothing treated it as "send").
IME_ENTER = """
([selector, how]) => {
  const target = document.querySelector(selector);
  const event = new KeyboardEvent('keydown', {
    key: 'Enter', code: 'Enter', isComposing: how === 'isComposing', bubbles: true, cancelable: true,
  });
  if (how === 'keyCode229') Object.defineProperty(event, 'keyCode', {get: () => 229});
  return target.dispatchEvent(event);
}
"""

# As after arriving from the address bar: nothing focused, Tab starts at the top of the document
# (the message box's autofocus would otherwise be the starting point).
FOCUS_AT_THE_START = """
() => {
  document.activeElement?.blur();
  document.body.tabIndex = -1;
  document.body.focus();
  document.body.removeAttribute('tabindex');
}
"""

# What the focused element looks like: enough to tell whether focus can be seen.
FOCUSED = """
() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  const box = el.getBoundingClientRect();
  const label = el.id ? '#' + el.id : el.tagName.toLowerCase() + '.' + [...el.classList].join('.');
  // An outline drawn outside the box is cut off at the sides by an ancestor that clips its overflow
  // (the top and bottom may be cut while the pane scrolls, which is fine).
  const ring = style.outlineStyle === 'none' ? 0
    : Math.max(0, parseFloat(style.outlineWidth) + parseFloat(style.outlineOffset));
  let clippedBy = null;
  for (let a = el.parentElement; a && a !== document.documentElement && !clippedBy; a = a.parentElement) {
    const s = getComputedStyle(a);
    if (s.overflowX === 'visible' && s.overflowY === 'visible') continue;
    const r = a.getBoundingClientRect();
    const left = r.left + a.clientLeft, right = left + a.clientWidth;
    if (box.left - ring < left - 0.5 || box.right + ring > right + 0.5) {
      clippedBy = a.tagName.toLowerCase() + (a.id ? '#' + a.id : '') + '.' + [...a.classList].join('.');
    }
  }
  return {
    label: label + ' "' + (el.textContent || el.value || '').trim().slice(0, 30) + '"',
    outlineStyle: style.outlineStyle, outlineWidth: parseFloat(style.outlineWidth), boxShadow: style.boxShadow,
    opacity: parseFloat(style.opacity), visible: box.width > 0 && box.height > 0 && style.visibility !== 'hidden',
    clippedBy,
  };
}
"""

# The conversation pane scrolled so that its first answer is at the top.
SCROLL_TO_THE_FIRST_ANSWER = """
() => {
  const list = document.getElementById('messages');
  const answer = list.querySelector('.message.assistant');
  list.scrollTop += answer.getBoundingClientRect().top - list.getBoundingClientRect().top;
}
"""

SCREENSHOT_EXCHANGES = [
    "think: step one, read the question; step two, answer it || The answer, with **bold** and `code`",
    "Here is a function:\n\n```python\ndef square(x: float) -> float:\n    return x * x\n```",
    "| Planet | Moons |\n|---|---:|\n| Earth | 1 |\n| Mars | 2 |\n| Jupiter | 95 |",
    "The area grows as $x^2$, and $$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$",
]


class LookAndAccessTests(BrowserTestCase):
    # ---- helpers ------------------------------------------------------------------------------
    def log_in(self, username: str, page) -> None:
        page.goto(f"{self.live_server_url}/accounts/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", PASSWORD)
        page.click("main > form[method=post] button[type=submit]")
        page.wait_for_url(f"{self.live_server_url}/")

    def axe_context(self, **options):
        """A context whose pages take an inline script (axe): one that bypasses the site's CSP."""
        if "strict_csp" in inspect.signature(self.new_context).parameters:
            return self.new_context(strict_csp=False, **options)  # bypassing is the default
        return self.new_context(bypass_csp=True, **options)

    def set_language_cookie(self, context, code: str) -> None:
        context.add_cookies([{"name": "django_language", "value": code, "url": self.live_server_url}])

    def audit(self, page, where: str, found: dict) -> None:
        violations = run_axe(page)
        # axe rates a skip link to nowhere "moderate" only; here it counts.
        if not page.evaluate(SKIP_LINKS_LEAD_SOMEWHERE):
            violations.append({"id": "skip-link", "impact": "moderate", "help": "a skip link's target is missing",
                               "nodes": [".skip-link"]})
        if violations:
            found[where] = violations

    def audit_the_main_pages(self, context, username: str, label: str, dark: bool = False) -> dict:
        """axe on login, signup, home, a finished exchange, the settings panel, the delete dialog and API keys."""
        found: dict = {}
        page = context.new_page()
        page.goto(f"{self.live_server_url}/accounts/login/")
        # (the colours axe judges are the ones meant)
        assert (page.evaluate(BODY_LUMINANCE) < 0.05) if dark else (page.evaluate(BODY_LUMINANCE) > 0.8)
        self.audit(page, f"{label}: login", found)
        page.goto(f"{self.live_server_url}/accounts/signup/")
        self.audit(page, f"{label}: signup", found)
        self.sign_up(username, page)
        self.audit(page, f"{label}: home, no conversation yet", found)
        self.start_chat(model="deepseek-chat", page=page)  # the demo model: its page has the demo banner
        assert page.is_visible("#demo-banner")
        self.audit(page, f"{label}: a new chat with the demo model", found)
        page.goto(f"{self.live_server_url}/")
        self.start_chat(model="echo-reasoner", page=page)
        self.ask("Some **bold** text and `code`", page)
        self.ask("think: a reason || An answer with\n\n```python\nprint('hi')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |",
                 page)
        page.click(".message.assistant.done .thinking summary")  # the folded reasoning, opened
        self.audit(page, f"{label}: a conversation with finished answers", found)
        page.click("#settings-panel summary")
        page.wait_for_selector("#settings-form", state="visible")
        self.audit(page, f"{label}: settings panel open", found)
        page.click("#delete-conversation")
        page.wait_for_selector("#delete-dialog[open]")
        self.audit(page, f"{label}: delete dialog open", found)
        page.keyboard.press("Escape")
        page.click("#api-keys-link")
        page.wait_for_selector("#create-key-form")
        self.audit(page, f"{label}: API keys, none yet", found)
        page.fill("#key-name", "laptop")
        page.fill("#key-password", PASSWORD)  # a new key needs the password again
        page.click("#create-key")
        page.wait_for_selector("#new-key")
        self.audit(page, f"{label}: API keys, a new key shown once", found)
        page.close()
        return found

    def tab_to(self, page, selector: str, seen: list, limit: int = 60) -> None:
        """Press Tab until the focused element matches `selector`, noting what each stop looked like."""
        for _ in range(limit):
            page.keyboard.press("Tab")
            focused = page.evaluate(FOCUSED)
            if focused:
                seen.append(focused)
            if page.evaluate("s => !!document.activeElement?.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}; it went through {[f['label'] for f in seen]}")

    # ---- tests --------------------------------------------------------------------------------
    def test_axe_finds_no_serious_violations_on_the_main_pages(self):
        found: dict = {}
        # Given the system's light colours, the dark ones, and the site in Simplified Chinese
        light = self.axe_context()
        dark = self.axe_context(color_scheme="dark")
        chinese = self.axe_context()
        self.set_language_cookie(chinese, "zh-hans")
        try:
            # When axe audits each main page in each of them
            found |= self.audit_the_main_pages(light, "ann", "light")
            found |= self.audit_the_main_pages(dark, "ben", "dark (system)", dark=True)
            found |= self.audit_the_main_pages(chinese, "chen", "zh-hans")
            # ... and the dark theme picked with the toggle while the system is light
            page = light.new_page()
            page.goto(f"{self.live_server_url}/")
            page.click(".conversation-link")
            page.wait_for_url(CONVERSATION_URL)
            page.click("#theme-toggle")
            assert page.get_attribute("html", "data-theme") == "dark"
            self.audit(page, "dark (toggle): a conversation with finished answers", found)
            page.click("#delete-conversation")
            page.wait_for_selector("#delete-dialog[open]")
            self.audit(page, "dark (toggle): delete dialog open", found)
            # The Chinese pages really were Chinese.
            chinese_page = chinese.new_page()
            chinese_page.goto(f"{self.live_server_url}/")
            assert chinese_page.get_attribute("html", "lang") == "zh-hans"
        finally:
            for context in (light, dark, chinese):
                context.close()
        # Then none of them has a serious or critical violation
        assert found == {}, "axe found serious problems:\n" + "\n".join(
            f"{where}: {v['impact']} {v['id']} ({v['help']}) at {v['nodes']}"
            for where, violations in found.items() for v in violations)

    def test_dark_mode_follows_the_system_and_the_toggle_is_remembered(self):
        # Given a system that prefers dark colours
        context = self.new_context(color_scheme="dark")
        page = context.new_page()
        try:
            self.sign_up("dora", page)
            # Then the page starts dark, following the system
            assert page.get_attribute("html", "data-theme") == "system"
            assert page.inner_text("#theme-toggle") == "Theme: system"
            assert page.evaluate(BODY_LUMINANCE) < 0.05
            # When the toggle is clicked: system → dark → light
            page.click("#theme-toggle")
            assert page.get_attribute("html", "data-theme") == "dark"
            assert page.inner_text("#theme-toggle") == "Theme: dark"
            assert page.evaluate(BODY_LUMINANCE) < 0.05
            page.click("#theme-toggle")
            assert page.get_attribute("html", "data-theme") == "light"
            assert page.inner_text("#theme-toggle") == "Theme: light"
            assert page.evaluate(BODY_LUMINANCE) > 0.8
            # And the page is reloaded
            response = page.reload()
            # Then it is still light though the system is dark, and the server painted it so
            assert 'data-theme="light"' in response.text()
            assert page.get_attribute("html", "data-theme") == "light"
            assert page.inner_text("#theme-toggle") == "Theme: light"
            assert page.evaluate(BODY_LUMINANCE) > 0.8
            # And one more click goes back to following the system
            page.click("#theme-toggle")
            assert page.get_attribute("html", "data-theme") == "system"
            assert page.evaluate(BODY_LUMINANCE) < 0.05
            assert 'data-theme="system"' in page.reload().text()
        finally:
            context.close()

    def test_the_language_can_be_switched_to_simplified_chinese_and_is_remembered(self):
        page = self.page
        # Given a user with a finished exchange, in English
        self.start_chat("lena", model="echo-reasoner")
        self.ask("Hello")
        assert page.get_attribute("html", "lang") == "en"
        assert page.inner_text("#new-chat") == "+ New chat"
        # When 简体中文 is picked from the list (nothing else: the list applies itself)
        with page.expect_navigation():
            page.select_option("#language-select", "zh-hans")
        # Then the page is in Chinese: the server's words and the ones JavaScript writes
        def assert_chinese():
            assert page.get_attribute("html", "lang") == "zh-hans"
            assert page.inner_text("#new-chat") == "+ 新对话"
            placeholder = page.get_attribute("#prompt", "placeholder")
            assert placeholder == "给 echo-reasoner 发消息（Enter 发送，Shift+Enter 换行）"
            assert page.text_content(".group-label") == "今天"
            page.wait_for_selector(f"{ANSWERS_DONE} .copy-message")
            assert page.inner_text(f"{ANSWERS_DONE} .copy-message") == "复制"
            assert page.inner_text(f"{ANSWERS_DONE} .regenerate") == "重新生成"
            assert page.inner_text(".message.user .role") == "你"
            assert page.inner_text("#theme-toggle") == "主题：跟随系统"

        assert CONVERSATION_URL.match(page.url)  # back on the same page
        assert_chinese()
        # And it stays Chinese after a reload
        page.reload()
        assert_chinese()
        # And after logging out (the login page is Chinese too) and back in
        page.click("#logout")
        page.wait_for_url(re.compile(r".*/accounts/login/"))
        assert page.get_attribute("html", "lang") == "zh-hans"
        assert page.inner_text("main h2") == "登录"
        self.log_in("lena", page)
        page.click(".conversation-link")
        page.wait_for_url(CONVERSATION_URL)
        assert_chinese()
        # When English is picked again
        with page.expect_navigation():
            page.select_option("#language-select", "en")
        # Then the page is English again
        assert page.get_attribute("html", "lang") == "en"
        assert page.inner_text("#new-chat") == "+ New chat"
        page.wait_for_selector(f"{ANSWERS_DONE} .copy-message")
        assert page.inner_text(f"{ANSWERS_DONE} .copy-message") == "Copy"
        assert page.text_content(".group-label") == "Today"

    def test_enter_never_sends_while_an_ime_composition_is_active(self):
        page = self.page
        renames = []
        page.on("request", lambda r: renames.append(r.url) if "/rename/" in r.url else None)
        # Given a chat whose message box holds text being composed with an IME
        self.start_chat("ima", model="echo-reasoner")
        page.fill("#prompt", "にほんご")
        # When Enter confirms a candidate (isComposing), and when an older IME sends keyCode 229
        assert page.evaluate(IME_ENTER, ["#prompt", "isComposing"]) is True
        assert page.evaluate(IME_ENTER, ["#prompt", "keyCode229"]) is True
        page.wait_for_timeout(500)
        # Then nothing is sent and the text stays
        assert page.locator(".message").count() == 0
        assert page.input_value("#prompt") == "にほんご"
        # When Enter is pressed for real
        page.press("#prompt", "Enter")
        # Then it is sent
        page.wait_for_selector(".message.user >> text=にほんご")
        page.wait_for_selector(ANSWERS_DONE, timeout=60_000)
        assert page.input_value("#prompt") == ""

        # Given the conversation's title being renamed inline in the sidebar
        page.click(".conversation-item.current .rename-button")
        page.fill(".rename-input", "日本語の題")
        # When Enter arrives during a composition
        assert page.evaluate(IME_ENTER, [".rename-input", "isComposing"]) is True
        assert page.evaluate(IME_ENTER, [".rename-input", "keyCode229"]) is True
        page.wait_for_timeout(500)
        # Then the title is not saved and the field stays open
        assert renames == []
        assert page.locator(".rename-input").count() == 1
        assert page.input_value(".rename-input") == "日本語の題"
        # When Enter is pressed for real, it is saved
        page.press(".rename-input", "Enter")
        page.wait_for_selector(".conversation-item.current .conversation-link >> text=日本語の題")
        assert len(renames) == 1
        assert page.inner_text("#conversation-title") == "日本語の題"

    def test_it_is_usable_on_a_375_px_phone(self):
        # Given a 375 px wide phone with a touch screen
        context = self.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
        page = context.new_page()
        try:
            page.goto(f"{self.live_server_url}/accounts/signup/")
            assert page.evaluate(SIDEWAYS) == [], "the signup page scrolls sideways"
            self.sign_up("phil", page)
            assert page.evaluate(SIDEWAYS) == [], "the home page scrolls sideways"
            assert page.is_visible("#start-chat") and not page.is_visible("#new-chat")
            # When a chat with the echo model is started from the conversation list
            page.tap("#open-sidebar")
            page.select_option("#new-chat-model", "echo-reasoner")
            page.tap("#new-chat")
            page.wait_for_url(CONVERSATION_URL)
            page.wait_for_selector("body[data-socket=open]")
            # Then the page fits the width, the composer shows, and the conversation list is tucked away
            assert page.evaluate(SIDEWAYS) == [], "the conversation page scrolls sideways"
            assert page.is_visible("#prompt") and page.is_visible("#send")
            send_box = page.locator("#send").bounding_box()
            assert send_box["x"] + send_box["width"] <= 375 and send_box["y"] + send_box["height"] <= 740
            assert not page.is_visible("#sidebar")
            assert page.is_visible("#open-sidebar")
            # When a message with a long code line and a wide table is sent
            page.tap("#prompt")
            page.fill("#prompt", "A long line:\n\n```\n" + "x = 1  # " + "very " * 40 + "\n```\n\n"
                      "| one | two | three | four | five | six | seven | eight |\n|---|---|---|---|---|---|---|---|\n"
                      "| 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 |\n\nand a-very-long-unbroken-word-" + "z" * 80)
            page.tap("#send")
            # Then the answer arrives and still nothing scrolls sideways, except inside the code block
            page.wait_for_selector(ANSWERS_DONE, timeout=60_000)
            assert page.evaluate(SIDEWAYS) == [], "an answer made the page scroll sideways"
            assert page.evaluate("(() => { const m = document.getElementById('messages');"
                                 " return m.scrollWidth <= m.clientWidth; })()"), "the messages scroll sideways"
            # When the menu button is tapped, the conversation list covers the page
            page.tap("#open-sidebar")
            assert page.is_visible("#sidebar")
            assert page.is_visible(".conversation-list .conversation-link")
            assert page.get_attribute("#open-sidebar", "aria-expanded") == "true"
            assert page.evaluate(SIDEWAYS) == [], "the open conversation list scrolls sideways"
            close_box = page.locator("#close-sidebar").bounding_box()
            assert close_box["width"] >= 24 and close_box["height"] >= 24, f"the close button is tiny: {close_box}"
            # And the close button hides it again
            page.tap("#close-sidebar")
            assert not page.is_visible("#sidebar")
            assert page.get_attribute("#open-sidebar", "aria-expanded") == "false"
            # And the list's links work from the phone too
            page.tap("#open-sidebar")
            page.tap(".conversation-item.current .conversation-link")
            page.wait_for_url(CONVERSATION_URL)
            assert not page.is_visible("#sidebar")
            page.wait_for_selector(ANSWERS_DONE)
        finally:
            context.close()

    def test_keyboard_only_use_with_visible_focus(self):
        page = self.page
        # Given a conversation page (opened with the mouse), with the focus at the page's start
        self.start_chat("kim", model="echo-reasoner")
        page.evaluate(FOCUS_AT_THE_START)
        # When Tab is pressed, the skip link is the first stop, and it shows
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip-link"
        assert page.locator(".skip-link").bounding_box()["x"] >= 0
        # And Enter on it lands in the message box
        page.keyboard.press("Enter")
        page.wait_for_function("document.activeElement.id === 'prompt'")
        # When a message is typed and Enter pressed, it is sent
        page.keyboard.type("think: keys only || Typed without a mouse")
        page.keyboard.press("Enter")
        page.wait_for_selector(ANSWERS_DONE, timeout=60_000)
        # Then Tab from the skip link on visits every control with a visible focus indicator
        page.evaluate(FOCUS_AT_THE_START)
        seen: list = []
        self.tab_to(page, ".skip-link", seen)
        self.tab_to(page, "#theme-toggle", seen)
        self.tab_to(page, ".message.assistant .copy-message", seen)
        self.tab_to(page, ".message.assistant .regenerate", seen)
        self.tab_to(page, "#send", seen)
        labels = [f["label"] for f in seen]
        for expected in ("#new-chat", "#search", "#language-select", "#theme-toggle", "#delete-conversation",
                         "button.secondary.copy-message", "button.secondary.regenerate", "#prompt", "#send"):
            assert any(label.startswith(expected) for label in labels), f"Tab skipped {expected}: {labels}"
        for focused in seen:
            outline = focused["outlineStyle"] != "none" and focused["outlineWidth"] > 0
            assert outline or focused["boxShadow"] != "none", f"no visible focus on {focused}"
            assert focused["visible"] and focused["opacity"] > 0.5, f"the focused control cannot be seen: {focused}"
            assert focused["clippedBy"] is None, f"the focus ring is cut off at the sides: {focused}"
        assert len({f["label"] for f in seen}) >= 10

        # When Space is pressed on the theme button, it changes the theme
        page.evaluate(FOCUS_AT_THE_START)
        self.tab_to(page, "#theme-toggle", [])
        page.keyboard.press("Space")
        assert page.get_attribute("html", "data-theme") == "dark"
        # When Enter is pressed on the sidebar's delete button, the dialog opens with the focus inside
        self.tab_to(page, ".conversation-item.current .delete-button", [])
        page.keyboard.press("Enter")
        page.wait_for_selector("#delete-dialog[open]")
        assert page.evaluate("document.activeElement.closest('dialog')?.id") == "delete-dialog"
        assert page.evaluate("document.activeElement.id") == "delete-cancel"
        # And Tab stays inside the dialog
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "delete-confirm"
        # When Escape is pressed, the dialog closes and the focus returns to the delete button
        page.keyboard.press("Escape")
        page.wait_for_selector("#delete-dialog", state="hidden")
        assert page.evaluate("document.activeElement.matches('.conversation-item.current .delete-button')")
        assert page.locator(".conversation-item").count() == 1
        # And the settings open with Enter on their summary
        self.tab_to(page, "#settings-panel summary", [])
        page.keyboard.press("Enter")
        assert page.evaluate("document.getElementById('settings-panel').open")

    def test_screenshots_of_the_main_page_in_light_dark_and_chinese_at_desktop_and_phone_widths(self):
        page = self.page
        fc_list = shutil.which("fc-list")
        if fc_list and not subprocess.run([fc_list, ":lang=zh"], capture_output=True, text=True).stdout.strip():
            warnings.warn("no Chinese font is installed (Debian: fonts-noto-cjk): the zh-hans screenshots "
                          "will show empty boxes", stacklevel=1)
        # Given a conversation with code, a table, maths and a reasoning answer
        self.start_chat("sam", model="echo-reasoner")
        for text in SCREENSHOT_EXCHANGES:
            self.ask(text)
        conversation = page.url
        logged_in = self.context.storage_state()
        folder = ARTIFACTS / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        variants = {
            "light-desktop": ({"viewport": DESKTOP}, "en"),
            "dark-desktop": ({"viewport": DESKTOP, "color_scheme": "dark"}, "en"),
            "zh-hans-desktop": ({"viewport": DESKTOP}, "zh-hans"),
            "light-phone": ({"viewport": PHONE, "is_mobile": True, "has_touch": True}, "en"),
            "dark-phone": ({"viewport": PHONE, "is_mobile": True, "has_touch": True, "color_scheme": "dark"}, "en"),
            "zh-hans-phone": ({"viewport": PHONE, "is_mobile": True, "has_touch": True}, "zh-hans"),
        }
        for name, (options, language) in variants.items():
            # When the page is shown in each look
            context = self.new_context(storage_state=logged_in, **options)
            self.set_language_cookie(context, language)
            try:
                shot = context.new_page()
                shot.goto(conversation)
                shot.wait_for_selector(f"{ANSWERS_DONE} .thinking")
                assert shot.locator(ANSWERS_DONE).count() == len(SCREENSHOT_EXCHANGES)
                assert shot.get_attribute("html", "lang") == language
                # The reasoning unfolded, the thread from its first answer, no focus ring or caret in the picture
                shot.click(f"{ANSWERS_DONE} .thinking summary")
                shot.evaluate(SCROLL_TO_THE_FIRST_ANSWER)
                shot.evaluate("document.activeElement.blur()")
                shot.evaluate("document.fonts.ready")
                path = folder / f"{name}.png"
                path.unlink(missing_ok=True)
                shot.screenshot(path=str(path), animations="disabled", caret="hide")
            finally:
                context.close()
            # Then a picture of it is saved
            assert path.exists() and path.stat().st_size > 10_000, f"{path} is missing or blank"

