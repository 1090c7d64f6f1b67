"""In Debian's Chromium: sign up, chat with a streamed answer, reload, and keep it private."""
from __future__ import annotations

import re
import shutil

import pytest
from celery.contrib.testing.worker import start_worker
from channels.testing import ChannelsLiveServerTestCase
from daphne.testing import DaphneProcess
from django.conf import settings
from django.db import connections
from django.test import override_settings

from deepseek_web.celery import app as celery_app
from inference.tasks import stop_engines

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "a long pass phrase 9"

# Counts how often the answer's text changed before it finished: streaming means many.
WATCH_ANSWER = """
window.answerUpdates = 0;
new MutationObserver(() => {
  const answer = document.querySelector('.message.assistant .content');
  if (answer && answer.textContent) window.answerUpdates += 1;
}).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
"""


class FreshConnectionsDaphne(DaphneProcess):
    def start(self):
        # The server is a forked child: it must not inherit (and later close) our SQLite handles.
        connections.close_all()
        super().start()


# Greedy decoding makes the demo model's answer the same every run: no early end-of-sentence.
GREEDY_DEMO = [{**settings.DEEPSEEK_MODELS[0], "temperature": 0, "max_new_tokens": 96}]


@pytest.mark.browser
@pytest.mark.integration
@override_settings(DEEPSEEK_MODELS=GREEDY_DEMO)
class ChatInChromiumTests(ChannelsLiveServerTestCase):
    ProtocolServerProcess = FreshConnectionsDaphne

    @classmethod
    def setUpClass(cls):
        from playwright.sync_api import sync_playwright

        super().setUpClass()
        cls.worker_context = start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False,
                                          queues=["model.deepseek-chat"], loglevel="WARNING")
        cls.worker_context.__enter__()
        cls.playwright = sync_playwright().start()
        cls.browser = cls.playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.playwright.stop()
        cls.worker_context.__exit__(None, None, None)
        stop_engines()  # an in-process worker sends no worker_shutdown: leave and stop the engines
        super().tearDownClass()

    def setUp(self):
        self.context = self.browser.new_context()
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)

    def tearDown(self):
        self.context.close()

    def sign_up(self, username: str) -> None:
        page = self.page
        page.goto(f"{self.live_server_url}/accounts/signup/")
        page.fill("#id_username", username)
        page.fill("#id_password1", PASSWORD)
        page.fill("#id_password2", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{self.live_server_url}/")

    def start_chat(self, username: str) -> None:
        """Sign up, open a new chat and wait until its socket is connected."""
        self.sign_up(username)
        self.page.click("#start-chat")
        self.page.wait_for_url(re.compile(r".*/c/[0-9a-f-]{36}/$"))
        self.page.wait_for_selector("body[data-socket=open]")

    def test_a_new_user_chats_sees_the_answer_stream_and_finds_it_after_reload(self):
        page = self.page
        self.start_chat("carol")
        conversation_url = page.url
        page.evaluate(WATCH_ANSWER)
        page.fill("#prompt", "Hello from Chromium")
        page.press("#prompt", "Enter")
        page.wait_for_selector(".message.user >> text=Hello from Chromium")
        # The first message names the conversation at once, without a reload.
        page.wait_for_selector(".conversation-header h1 >> text=Hello from Chromium")
        assert page.inner_text("#conversation-list li.current") == "Hello from Chromium"
        page.wait_for_selector(".message.assistant.streaming, .message.assistant.done")
        assert page.is_visible("#stop") or page.is_visible(".message.assistant.done")
        page.wait_for_selector(".message.assistant.done", timeout=60_000)
        assert page.evaluate("window.answerUpdates") > 3, "the answer arrived in one piece, not streamed"
        answer = page.inner_text(".message.assistant .content")
        assert answer.strip()
        assert page.input_value("#prompt") == "" and page.is_visible("#send")

        page.reload()
        assert page.inner_text(".message.user .content") == "Hello from Chromium"
        assert page.inner_text(".message.assistant .content") == answer
        assert page.inner_text("#conversation-list li.current") == "Hello from Chromium"

        # Another user sees none of it.
        page.click("#logout")
        page.wait_for_url(re.compile(r".*/accounts/login/"))
        self.sign_up("dave")
        assert "Hello from Chromium" not in page.content()
        response = page.goto(conversation_url)
        assert response.status == 404

    # Only the worker (in this process) reads max_new_tokens: the answer becomes long enough to stop.
    @override_settings(DEEPSEEK_MODELS=[{**GREEDY_DEMO[0], "max_new_tokens": 1900}])
    def test_stop_ends_a_streaming_answer_and_keeps_what_was_written(self):
        page = self.page
        self.start_chat("frank")
        page.fill("#prompt", "Write a very long story")
        page.press("#prompt", "Enter")
        page.wait_for_selector(".message.assistant.streaming")
        page.wait_for_function("document.querySelector('.message.assistant .content').textContent.length > 20")
        page.click("#stop")
        page.wait_for_selector(".message.assistant.cancelled", timeout=10_000)
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
