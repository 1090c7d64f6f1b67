"""In Chromium: the XSS corpus stays inert everywhere it can appear, and long chats stay cheap."""
from __future__ import annotations

import json
import re

from chat.conversations.models import Conversation, Message
from tests.support.browser import BrowserTestCase
from tests.support.xss_corpus import PAYLOADS

# Elements no message, title or setting may ever produce on the page.
DANGEROUS = "#messages script, #messages iframe, #messages object, #messages embed, #messages img, " \
            "#messages svg, #messages style, #messages link, #messages meta, #messages base, " \
            "#messages form:not(.edit-box), .sidebar img, .sidebar script, .sidebar svg:not([aria-hidden])"


def handlers_on_page(page) -> list[str]:
    """Inline event-handler attributes and javascript: URLs anywhere in the document."""
    return page.evaluate("""() => {
      const found = [];
      for (const el of document.querySelectorAll('*')) {
        for (const attr of el.attributes) {
          const value = attr.value.replace(/[\\s\\u0000-\\u001f]/g, '').toLowerCase();
          const url = /href|src|action/.test(attr.name);
          if (attr.name.startsWith('on') || (url && /^(javascript|vbscript|data):/.test(value)))
            found.push(el.tagName + ' ' + attr.name + '=' + attr.value.slice(0, 40));
        }
      }
      return found;
    }""")


def corpus_conversation(user, title: str, system_prompt: str) -> Conversation:
    """Every payload as a question, as an answer and as reasoning (as if the model wrote it)."""
    conversation = Conversation.objects.create(user=user, model="echo-reasoner", title=title,
                                               system_prompt=system_prompt)
    parent = None
    for n, payload in enumerate(PAYLOADS):
        parent = Message.objects.create(conversation=conversation, position=2 * n + 1, role="user",
                                        content=payload, parent=parent)
        parent = Message.objects.create(conversation=conversation, position=2 * n + 2, role="assistant",
                                        content=payload, reasoning=payload, parent=parent)
    Conversation.objects.filter(id=conversation.id).update(current_leaf=parent)
    return conversation


def show_whole_branch(page) -> None:
    """A page carries its branch's newest messages (CONVERSATION_PAGE_MESSAGES); "Show earlier messages"
    fetches the rest, a window at a time."""
    while page.locator(".load-earlier").count():
        before = page.locator(".message").count()
        page.click(".load-earlier")
        page.wait_for_function("n => document.querySelectorAll('.message').length > n", arg=before)


class SafetyAndScaleTests(BrowserTestCase):
    def assert_inert(self, page) -> None:
        assert page.evaluate("window.__xssCalls") == []
        assert page.locator(DANGEROUS).count() == 0
        assert handlers_on_page(page) == []

    def test_the_xss_corpus_is_inert_as_prompts_answers_titles_settings_and_imports(self):
        page = self.page
        self.start_chat("xavier", model="echo-reasoner")
        user = Conversation.objects.get(user__username="xavier").user
        # Titles of other conversations in the sidebar, and one with every payload in every place.
        for payload in PAYLOADS:
            Conversation.objects.create(user=user, model="echo-reasoner", title=payload[:200])
        stored = corpus_conversation(user, PAYLOADS[0], "\n".join(PAYLOADS)[:4000])

        # Live: a few payloads sent as prompts and streamed back as answers (the echo engine).
        for payload in PAYLOADS[:12]:
            self.ask(payload)
        assert page.locator(".message.user .content").all_text_contents() == PAYLOADS[:12]
        self.assert_inert(page)

        # Stored: the whole corpus after a load, with the thinking sections opened and the settings shown.
        page.goto(f"{self.live_server_url}/c/{stored.id}/")
        page.wait_for_selector("body[data-socket=open]")
        show_whole_branch(page)
        assert page.locator(".message").count() == 2 * len(PAYLOADS)
        for summary in page.locator("details.thinking summary").all():
            summary.click()
        page.click("#settings-panel summary")
        assert page.input_value("#setting-system_prompt") == "\n".join(PAYLOADS)[:4000]
        self.assert_inert(page)

        # Imported: the corpus exported as JSON and imported back through the page.
        with page.expect_download() as exported:
            page.click("#export-json")
        data = json.loads(open(exported.value.path(), encoding="utf-8").read())
        assert [m["content"] for m in data["messages"]][:2] == [PAYLOADS[0], PAYLOADS[0]]
        page.set_input_files("#import-file", exported.value.path())
        page.click("#import-button")
        page.wait_for_url(re.compile(r".*/c/[0-9a-f-]{36}/$"))
        assert page.url != f"{self.live_server_url}/c/{stored.id}/"
        show_whole_branch(page)
        assert page.locator(".message").count() == 2 * len(PAYLOADS)
        self.assert_inert(page)

        # Search results list the titles too.
        page.fill("#search", "xss")
        page.press("#search", "Enter")
        page.wait_for_selector("#search-summary")
        self.assert_inert(page)

    def test_a_300_message_conversation_streams_without_touching_the_rest_of_the_page(self):
        page = self.page
        self.start_chat("yara", model="echo-reasoner")
        conversation = Conversation.objects.get(user__username="yara")
        parent = None
        for n in range(150):
            parent = Message.objects.create(conversation=conversation, position=2 * n + 1, role="user",
                                            content=f"Question {n}: how do I sort a list?", parent=parent)
            parent = Message.objects.create(
                conversation=conversation, position=2 * n + 2, role="assistant", parent=parent,
                content=f"Answer {n}: use **sorted**.\n\n```python\nsorted(items, key=len)\n```\n\n"
                        f"| n | $n^2$ |\n|--|--|\n| {n} | {n * n} |")
        Conversation.objects.filter(id=conversation.id).update(current_leaf=parent)
        page.reload()
        page.wait_for_selector("body[data-socket=open]")
        load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
        show_whole_branch(page)
        assert page.locator(".message").count() == 300
        assert page.locator(".message.assistant .code-block").count() == 150

        # While an answer streams, record every change outside the answer being written.
        page.evaluate("""() => {
          window.outside = 0; window.changes = 0; window.longTasks = 0;
          new PerformanceObserver((list) => { window.longTasks += list.getEntries().length; })
            .observe({type: 'longtask'});
          new MutationObserver((records) => {
            for (const r of records) {
              window.changes += 1;
              const article = (r.target.nodeType === 1 ? r.target : r.target.parentElement).closest('article');
              const added = [...r.addedNodes].every((n) => n.nodeName === 'ARTICLE');
              const busyFlag = r.target.id === 'messages' && r.attributeName === 'data-busy';
              if (!(article && article === document.querySelector('#messages article:last-child'))
                  && !(r.target.id === 'messages' && r.type === 'childList' && added) && !busyFlag) window.outside += 1;
            }
          }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true,
                                                          attributes: true});
        }""")
        self.ask("a fairly long answer that streams in many small pieces " * 6)
        changes, outside, long_tasks = page.evaluate("[window.changes, window.outside, window.longTasks]")
        assert changes > 20, "the answer did not stream"
        assert outside == 0, f"{outside} changes touched earlier messages while streaming"
        assert page.locator(".message").count() == 302
        print(f"\n300-message page: DOMContentLoaded {load_ms:.0f} ms; streaming: {changes} DOM changes, "
              f"0 outside the answer, {long_tasks} long tasks (>50 ms)")
