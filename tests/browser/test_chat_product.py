"""In Chromium: the sidebar, versions and branches, rendering, reasoning, settings, resume, copy."""
from __future__ import annotations

import json
import re
import time
import uuid

from django.test import override_settings

from chat.conversations.models import Conversation, Message
from tests.support.browser import ECHO, GREEDY_DEMO, VISION, BrowserTestCase

MARKDOWN = """# Plan

Some **bold** and a [link](https://example.com).

| a | b |
|---|---|
| 1 | 2 |

```python
def add(a, b):
    return a + b
```

Euler: $e^{i\\pi} + 1 = 0$ and \\[\\frac{a}{b}\\]

It costs $5 and $10 today."""


class ChatProductTests(BrowserTestCase):
    def answers(self) -> list[str]:
        return self.page.locator(".message.assistant .content").all_inner_texts()

    def test_the_sidebar_groups_renames_searches_and_deletes_with_confirmation(self):
        page = self.page
        self.start_chat("gina", model="echo-reasoner")
        self.ask("apples and pears")
        first_url = page.url
        self.start_chat(model="echo-reasoner")
        self.ask("bananas")
        # Newest first, under "Today".
        assert page.locator(".group-label").all_text_contents() == ["Today"]
        assert page.locator(".conversation-link").all_inner_texts() == ["bananas", "apples and pears"]

        # Rename inline: Enter saves; Escape cancels.
        page.click(".conversation-item.current .rename-button")
        page.fill(".rename-input", "Fruit <b>salad</b>")
        page.press(".rename-input", "Enter")
        page.wait_for_selector("#conversation-title >> text=Fruit <b>salad</b>")
        assert page.inner_text(".conversation-item.current .conversation-link") == "Fruit <b>salad</b>"
        page.click(".conversation-item.current .rename-button")
        page.fill(".rename-input", "never saved")
        page.press(".rename-input", "Escape")
        page.reload()
        assert page.inner_text("#conversation-title") == "Fruit <b>salad</b>"

        # Search covers titles and message text.
        page.fill("#search", "PEARS")
        page.press("#search", "Enter")
        page.wait_for_selector("#search-summary")
        assert page.locator(".conversation-link").all_inner_texts() == ["apples and pears"]
        page.fill("#search", "salad")
        page.press("#search", "Enter")
        page.wait_for_function("document.querySelectorAll('.conversation-link').length === 1 && "
                               "document.querySelector('.conversation-link').textContent.includes('salad')")

        # Delete asks first; Cancel keeps it, Delete removes it and its messages.
        page.goto(first_url)
        page.click("#delete-conversation")
        assert page.is_visible("#delete-dialog") and "apples and pears" in page.inner_text("#delete-dialog")
        page.click("#delete-cancel")
        assert not page.is_visible("#delete-dialog")
        assert Conversation.objects.filter(title="apples and pears").exists()
        page.click("#delete-conversation")
        page.click("#delete-confirm")
        page.wait_for_url(f"{self.live_server_url}/")
        assert page.locator(".conversation-link").all_inner_texts() == ["Fruit <b>salad</b>"]
        assert not Conversation.objects.filter(title="apples and pears").exists()
        assert not Message.objects.filter(content="apples and pears").exists()
        self.assert_no_script_ran()

    def test_regenerate_keeps_versions_and_edit_branches_the_conversation(self):
        page = self.page
        self.start_chat("hank", model="echo-reasoner")
        self.ask("first question")
        self.ask("second question")
        # Regenerate the last answer twice: three versions, switchable with ‹ ›.
        for expected in (2, 3):
            page.locator(".message.assistant").last.locator(".regenerate").click()
            page.wait_for_selector(f".message.assistant .version-label >> text={expected}/{expected}")
            page.wait_for_selector(".message.assistant.done >> nth=1")
            page.wait_for_function("!document.querySelector('.message.assistant.pending, "
                                   ".message.assistant.streaming')")
        last = page.locator(".message.assistant").last
        last.locator(".version-prev").click()
        assert last.locator(".version-label").inner_text() == "2/3"
        assert page.locator(".message.assistant").last.locator(".version-label").inner_text() == "2/3"

        # Edit the first question: a new branch with its own answer; the old branch stays reachable.
        page.locator(".message.user").first.locator(".edit").click()
        page.fill(".edit-box textarea", "edited question")
        page.click(".edit-box .save-edit")
        page.wait_for_selector(".message.user .version-label >> text=2/2")
        page.wait_for_function("document.querySelectorAll('.message').length === 2 && "
                               "document.querySelector('.message.assistant.done')")
        assert page.locator(".message .content").all_inner_texts() == ["edited question", "edited question"]
        page.locator(".message.user").first.locator(".version-prev").click()
        assert page.locator(".message.user .content").all_inner_texts() == ["first question", "second question"]
        # Back on a branch, the newest answers show; pick version 2 of the last one again.
        page.locator(".message.assistant").last.locator(".version-prev").click()
        # The reloaded page shows the branch last picked, with the answer version last picked: reload once
        # the select frame has been handled (the conversation's current leaf is the version on show).
        shown = uuid.UUID(page.locator(".message.assistant").last.get_attribute("data-message-id"))
        conversation = Conversation.objects.get(user__username="hank")
        deadline = time.monotonic() + 60  # only against hanging
        while Conversation.objects.get(id=conversation.id).current_leaf_id != shown and time.monotonic() < deadline:
            time.sleep(0.1)
        page.reload()
        assert page.locator(".message.user .content").all_inner_texts() == ["first question", "second question"]
        assert page.locator(".message.assistant").last.locator(".version-label").inner_text() == "2/3"
        assert Message.objects.filter(role="assistant").count() == 5

    def test_markdown_code_math_and_links_are_rendered_safely(self):
        page = self.page
        self.start_chat("ivan", model="echo-reasoner")
        self.ask(MARKDOWN)
        answer = page.locator(".message.assistant .content.rendered")
        assert answer.locator("h1").inner_text() == "Plan"
        assert answer.locator("table td").all_inner_texts() == ["1", "2"]
        assert answer.locator(".code-block pre .k").first.inner_text() == "def"  # highlighted keyword
        assert answer.locator("math").count() == 2 and answer.locator("math mfrac").count() == 1
        assert answer.locator("a").get_attribute("rel") == "noopener nofollow"
        assert "It costs $5 and $10 today." in answer.inner_text()
        # The user's own message is shown as typed, not rendered.
        assert page.inner_text(".message.user .content") == MARKDOWN

    def test_copy_puts_a_message_and_a_code_block_on_the_clipboard(self):
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=self.live_server_url)
        page = self.page
        self.start_chat("judy", model="echo-reasoner")
        self.ask("Run:\n\n```sh\necho hi\n```")
        page.locator(".message.assistant .copy-message").click()
        assert page.evaluate("navigator.clipboard.readText()") == "Run:\n\n```sh\necho hi\n```"
        page.click(".message.assistant .copy-code")
        assert page.evaluate("navigator.clipboard.readText()").strip() == "echo hi"
        page.wait_for_selector(".message.assistant .copy-code >> text=Copied")

    def test_thinking_streams_open_above_the_answer_and_folds_when_the_answer_starts(self):
        page = self.page
        self.start_chat("kate", model="echo-reasoner")
        page.evaluate("""window.seen = [];
          new MutationObserver(() => {
            const d = document.querySelector('.message.assistant details.thinking');
            const c = document.querySelector('.message.assistant .content');
            if (d) window.seen.push([d.open, c.textContent.length > 0, d.textContent.length]);
          }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true,
                                                          attributes: true});""")
        self.ask("think: first I consider the question carefully, step by step, at length || The answer.")
        seen = page.evaluate("window.seen")
        assert any(open_ and not answering for open_, answering, _ in seen), "thinking was never shown open"
        assert [length for open_, answering, length in seen if open_ and not answering][-1] > 20, "not streamed"
        assert not page.locator("details.thinking").evaluate("d => d.open")
        assert page.inner_text(".message.assistant .content") == "The answer."
        page.click("details.thinking summary")
        assert "consider the question carefully" in page.inner_text(".reasoning-text")
        page.reload()
        assert not page.locator("details.thinking").evaluate("d => d.open")
        assert page.inner_text(".message.assistant .content") == "The answer."

    def test_settings_are_validated_and_used_for_the_next_answer(self):
        page = self.page
        self.start_chat("liam", model="echo-reasoner")
        page.click("#settings-panel summary")
        options = page.locator("#setting-model option").all_inner_texts()
        assert options == ["deepseek-chat", "echo-reasoner", "deepseek-vl"]
        page.fill("#setting-temperature", "5")
        page.fill("#setting-system_prompt", "Be brief.")
        page.click("#save-settings")
        page.wait_for_selector("#settings-panel[open] .form-error")
        assert "less than or equal to 2" in page.inner_text("#settings-panel .form-error")
        conversation = Conversation.objects.get(user__username="liam")
        assert (conversation.temperature, conversation.system_prompt) == (None, "")
        page.fill("#setting-temperature", "0")
        page.fill("#setting-max_tokens", "3")
        page.click("#save-settings")
        page.wait_for_selector(".flash >> text=Settings saved.")
        conversation.refresh_from_db()
        assert (conversation.temperature, conversation.max_tokens, conversation.system_prompt) == (0, 3, "Be brief.")
        page.wait_for_selector("body[data-socket=open]")
        self.ask("a long question that the echo would repeat in full")
        # max_tokens 3: the echo engine stops after three chunks of four characters.
        assert page.inner_text(".message.assistant .content") == "a long quest"

    def test_export_downloads_and_import_brings_a_conversation_back(self):
        page = self.page
        self.start_chat("mona", model="echo-reasoner")
        self.ask("export me")
        with page.expect_download() as markdown:
            page.click("#export-md")
        text = open(markdown.value.path(), encoding="utf-8").read()
        assert "# export me" in text and "## You" in text and "## Assistant" in text
        with page.expect_download() as exported:
            page.click("#export-json")
        data = json.loads(open(exported.value.path(), encoding="utf-8").read())
        assert [m["content"] for m in data["messages"]] == ["export me", "export me"]
        page.set_input_files("#import-file", exported.value.path())
        page.click("#import-button")
        page.wait_for_url(re.compile(r".*/c/[0-9a-f-]{36}/$"))
        assert page.locator(".message .content").all_inner_texts() == ["export me", "export me"]
        assert Conversation.objects.filter(user__username="mona").count() == 2
        # A bad file: a clear error, nothing created.
        page.set_input_files("#import-file", files=[{"name": "x.json", "mimeType": "application/json",
                                                      "buffer": b'{"format": "something else"}'}])
        page.click("#import-button")
        page.wait_for_selector("#import-error")
        assert "not a conversation export" in page.inner_text("#import-error")
        assert Conversation.objects.filter(user__username="mona").count() == 2

    # Only the worker (in this process) reads max_new_tokens: the answer becomes long enough to reload.
    @override_settings(DEEPSEEK_MODELS=[{**GREEDY_DEMO, "max_new_tokens": 1900}, ECHO, VISION])
    def test_a_reload_mid_answer_shows_the_partial_text_and_continues_live(self):
        page = self.page
        self.start_chat("nina")
        page.fill("#prompt", "Write a very long story")
        page.press("#prompt", "Enter")
        page.wait_for_function("document.querySelector('.message.assistant.streaming .content')"
                               "?.textContent.length > 20")
        page.reload()
        # The partial answer is on the page at once, and grows from there over the socket.
        partial = page.inner_text(".message.assistant .content")
        assert partial and page.is_visible(".message.assistant.streaming")
        page.wait_for_function("n => document.querySelector('.message.assistant .content').textContent.length > n",
                               arg=len(partial) + 20)
        page.click("#stop")
        page.wait_for_selector(".message.assistant.cancelled")
        shown = page.inner_text(".message.assistant .content")
        assert shown.startswith(partial[:10])
        assert Message.objects.get(role="assistant").content.strip() == shown.strip()

    @override_settings(DEEPSEEK_MODELS=[{**GREEDY_DEMO, "max_new_tokens": 1900}, ECHO, VISION])
    def test_a_dropped_connection_says_offline_reconnects_and_catches_up(self):
        page = self.page
        routes = []

        def through(ws):
            routes.append(ws)
            ws.connect_to_server()

        page.route_web_socket(re.compile(r".*/ws/chat/.*"), through)
        self.start_chat("omar")
        page.fill("#prompt", "Write a very long story")
        page.press("#prompt", "Enter")
        page.wait_for_function("document.querySelector('.message.assistant.streaming .content')"
                               "?.textContent.length > 20")
        routes[-1].close(code=1001, reason="network gone")
        page.wait_for_selector("#connection:not([hidden])")
        assert "Offline" in page.inner_text("#connection")
        page.wait_for_selector("body[data-socket=open]", timeout=60_000)  # the bound only guards against hanging
        assert page.is_hidden("#connection") and len(routes) == 2
        # Caught up from the row, then live again: the text keeps growing on the new socket.
        length = len(page.inner_text(".message.assistant .content"))
        page.wait_for_function("n => document.querySelector('.message.assistant .content').textContent.length > n",
                               arg=length + 20)
        page.click("#stop")
        page.wait_for_selector(".message.assistant.cancelled")
        shown = page.inner_text(".message.assistant .content")
        assert Message.objects.get(role="assistant").content.strip() == shown.strip()

    def test_a_refused_message_comes_back_to_the_composer_with_the_reason(self):
        page = self.page
        self.start_chat("rhea")
        too_long = "Please read all of this. " + "word " * 2500  # past the demo model's 2048-token context
        page.fill("#prompt", too_long)
        page.press("#prompt", "Enter")
        page.wait_for_selector("#error:not([hidden])")
        assert "tokens long" in page.inner_text("#error")
        assert page.input_value("#prompt") == too_long  # nothing typed is lost
        assert Message.objects.count() == 0  # and nothing was saved
        # Shortened, it goes, and the composer empties for good.
        page.fill("#prompt", "Hello")
        page.press("#prompt", "Enter")
        page.wait_for_selector(".message.assistant.done")
        assert page.input_value("#prompt") == "" and page.is_hidden("#error")
