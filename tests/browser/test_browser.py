"""In Debian's Chromium: sign up, chat with a streamed answer, stop, reload, and keep it private."""
from __future__ import annotations

import re

from django.test import override_settings

from tests.support.browser import ECHO, GREEDY_DEMO, VISION, BrowserTestCase

# Counts how often the answer's text changed before it finished: streaming means many.
WATCH_ANSWER = """
window.answerUpdates = 0;
new MutationObserver(() => {
  const answer = document.querySelector('.message.assistant .content');
  if (answer && answer.textContent) window.answerUpdates += 1;
}).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
"""


class ChatInChromiumTests(BrowserTestCase):
    def test_a_new_user_chats_sees_the_answer_stream_and_finds_it_after_reload(self):
        # Under the site's own strict Content-Security-Policy: nothing the page needs is blocked.
        self.context.close()
        self.context = self.new_context(strict_csp=True)
        page = self.page = self.context.new_page()
        self.start_chat("carol")
        conversation_url = page.url
        page.evaluate(WATCH_ANSWER)
        page.fill("#prompt", "Hello from Chromium")
        page.press("#prompt", "Enter")
        page.wait_for_selector(".message.user >> text=Hello from Chromium")
        # The first message names the conversation at once, without a reload.
        page.wait_for_selector(".conversation-header h1 >> text=Hello from Chromium")
        assert page.inner_text(".conversation-item.current .conversation-link") == "Hello from Chromium"
        page.wait_for_selector(".message.assistant.streaming, .message.assistant.done")
        assert page.is_visible("#stop") or page.is_visible(".message.assistant.done")
        page.wait_for_selector(".message.assistant.done", timeout=60_000)
        assert page.evaluate("window.answerUpdates") > 3, "the answer arrived in one piece, not streamed"
        answer = page.inner_text(".message.assistant .content")
        assert answer.strip()
        assert page.evaluate("window.__cspViolations") == []
        assert page.evaluate("document.querySelector('script:not([src]):not([type=\"application/json\"])')") is None
        assert page.input_value("#prompt") == "" and page.is_visible("#send")

        page.reload()
        assert page.inner_text(".message.user .content") == "Hello from Chromium"
        assert page.inner_text(".message.assistant .content") == answer
        assert page.inner_text(".conversation-item.current .conversation-link") == "Hello from Chromium"

        # Another user sees none of it.
        page.click("#logout")
        page.wait_for_url(re.compile(r".*/accounts/login/"))
        self.sign_up("dave")
        assert "Hello from Chromium" not in page.content()
        response = page.goto(conversation_url)
        assert response.status == 404

    # Only the worker (in this process) reads max_new_tokens: the answer becomes long enough to stop.
    @override_settings(DEEPSEEK_MODELS=[{**GREEDY_DEMO, "max_new_tokens": 1900}, ECHO, VISION])
    def test_stop_ends_a_streaming_answer_and_keeps_what_was_written(self):
        page = self.page
        self.start_chat("frank")
        page.fill("#prompt", "Write a very long story")
        page.press("#prompt", "Enter")
        page.wait_for_selector(".message.assistant.streaming")
        page.wait_for_function("document.querySelector('.message.assistant .content').textContent.length > 20")
        page.click("#stop")
        page.wait_for_selector(".message.assistant.cancelled", timeout=60_000)  # only against hanging
        assert page.inner_text(".message.assistant .notice") == "Stopped."
        assert page.is_visible("#send") and not page.is_visible("#stop")
        partial = page.inner_text(".message.assistant .content")
        page.reload()
        assert page.inner_text(".message.assistant .content") == partial and partial

    def test_shift_enter_makes_a_new_line_and_an_empty_message_is_not_sent(self):
        page = self.page
        self.start_chat("erin")
        page.press("#prompt", "Enter")
        page.fill("#prompt", "line one")
        page.press("#prompt", "Shift+Enter")
        page.type("#prompt", "line two")
        assert page.input_value("#prompt") == "line one\nline two"
        assert page.locator(".message").count() == 0
        page.press("#prompt", "Enter")
        page.wait_for_selector(".message.assistant.done", timeout=60_000)
        assert page.inner_text(".message.user .content") == "line one\nline two"
