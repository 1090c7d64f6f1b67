"""The shared set-up of the browser tests: a live daphne server, a real Celery worker, Chromium.

Three models are configured: the demo model (greedy, so its answers are the same every run),
"echo-reasoner", a reasoning model whose answers come from tests/echo_engine.py, and the
vision demo model "deepseek-vl".
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from channels.testing import ChannelsLiveServerTestCase
from daphne.testing import DaphneProcess
from django.conf import settings
from django.db import connections
from django.test import override_settings

from chat.core.served_models import get_model
from chat.worker import tasks
from tests.support.echo_engine import EchoEngine
from tests.support.worker import started_worker
from tests.support.xss_corpus import RECORDER_JS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "a long pass phrase 9"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", settings.DATA_DIR / "test-artifacts"))

# Greedy decoding makes the demo model's answer the same every run: no early end-of-sentence.
GREEDY_DEMO = {**settings.DEEPSEEK_MODELS[0], "temperature": 0, "max_new_tokens": 96}
ECHO = {**GREEDY_DEMO, "name": "echo-reasoner", "reasoning": True, "demo": False}
VISION = {"name": "deepseek-vl", "path": str(settings.DEMO_MODELS_DIR / "demo-vision"), "vision": True, "demo": True,
          "max_context": 2048, "temperature": 0, "max_new_tokens": 48}
BROWSER_MODELS = [GREEDY_DEMO, ECHO, VISION]


class FreshConnectionsDaphne(DaphneProcess):
    def start(self):
        # The server is a forked child: it must not inherit (and later close) our SQLite handles.
        connections.close_all()
        super().start()

    def run(self):
        # In the child: asgiref's shared executor was copied with a record of the parent's worker
        # thread, which did not survive the fork; work sent to it would wait forever (every
        # database_sync_to_async call, once an earlier test in this process had used one).
        from concurrent.futures import ThreadPoolExecutor

        from asgiref.sync import SyncToAsync

        SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)
        super().run()


@pytest.mark.browser
@pytest.mark.integration
@override_settings(DEEPSEEK_MODELS=BROWSER_MODELS)
class BrowserTestCase(ChannelsLiveServerTestCase):
    ProtocolServerProcess = FreshConnectionsDaphne

    @classmethod
    def setUpClass(cls):
        from playwright.sync_api import sync_playwright

        super().setUpClass()
        # Not announced: answers reach it on the models' shared queues.
        cls.worker_context = started_worker(["model.deepseek-chat", "model.echo-reasoner", "model.deepseek-vl"],
                                            concurrency=2, announce=False)
        cls.worker_context.__enter__()
        cls.playwright = sync_playwright().start()
        cls.browser = cls.playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.playwright.stop()
        cls.worker_context.__exit__(None, None, None)  # stops the engines too
        super().tearDownClass()

    def setUp(self):
        # The worker runs in this process: the echo model's engine is ours to provide.
        self.echo_spec = get_model("echo-reasoner")
        tasks._engines[self.echo_spec] = EchoEngine()
        self.context = self.new_context()
        self.page = self.context.new_page()

    def tearDown(self):
        self.context.close()
        tasks._engines.pop(self.echo_spec, None)

    def new_context(self, strict_csp: bool = False, **options):
        """A browser context. Playwright's wait_for_function evaluates strings, which the site's
        CSP forbids, so contexts bypass it unless `strict_csp` (tests that keep to selectors)."""
        context = self.browser.new_context(bypass_csp=not strict_csp, **options)
        context.set_default_timeout(30_000)
        # Every XSS payload calls window.__xss(n): record calls instead of running anything.
        context.add_init_script(RECORDER_JS)
        context.add_init_script(
            "window.__cspViolations = [];"
            "document.addEventListener('securitypolicyviolation',"
            " (e) => window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));")
        return context

    # ---- steps --------------------------------------------------------------------------------
    def sign_up(self, username: str, page=None) -> None:
        page = page or self.page
        page.goto(f"{self.live_server_url}/accounts/signup/")
        page.fill("#id_username", username)
        page.fill("#id_password1", PASSWORD)
        page.fill("#id_password2", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{self.live_server_url}/")

    def start_chat(self, username: str | None = None, model: str = "deepseek-chat", page=None) -> None:
        """(Sign up,) open a new chat with `model` and wait until its socket is connected."""
        page = page or self.page
        if username:
            self.sign_up(username, page)
        page.select_option("#new-chat-model", model)
        page.click("#new-chat")
        page.wait_for_url(re.compile(r".*/c/[0-9a-f-]{36}/$"))
        page.wait_for_selector("body[data-socket=open]")

    def ask(self, text: str, page=None) -> None:
        """Send `text` and wait for the answer to finish."""
        page = page or self.page
        answers = page.locator(".message.assistant.done, .message.assistant.cancelled, .message.assistant.failed")
        before = answers.count()
        page.fill("#prompt", text)
        page.press("#prompt", "Enter")
        page.wait_for_function(
            "n => document.querySelectorAll('.message.assistant.done, .message.assistant.cancelled,"
            " .message.assistant.failed').length > n", arg=before, timeout=60_000)

    def assert_no_script_ran(self, page=None) -> None:
        page = page or self.page
        assert page.evaluate("window.__xssCalls") == []
