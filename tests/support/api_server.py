"""The shared set-up of the /v1 API's end-to-end tests: a live daphne server, a real Celery worker
(in this process, so tests can hand it a test engine), the demo models, and a user with a key.

Models: "deepseek-chat" (the greedy demo model), "echo-reasoner" (a reasoning model whose answer
is the question: tests/echo_engine.py) and "deepseek-vl" (the vision demo model).
"""
from __future__ import annotations

import pytest
from channels.testing import ChannelsLiveServerTestCase
from django.contrib.auth import get_user_model
from django.test import override_settings

from chat.accounts import api_keys
from chat.core.redis_server import shared_client
from chat.core.served_models import get_model
from chat.worker import tasks
from tests.support.browser import BROWSER_MODELS, FreshConnectionsDaphne
from tests.support.echo_engine import EchoEngine
from tests.support.worker import started_worker

API_MODELS = BROWSER_MODELS
QUEUES = ["model.deepseek-chat", "model.echo-reasoner", "model.deepseek-vl"]


@pytest.mark.integration
@override_settings(DEEPSEEK_MODELS=API_MODELS, API_KEEPALIVE_SECONDS=0.3)
class ApiServerTestCase(ChannelsLiveServerTestCase):
    ProtocolServerProcess = FreshConnectionsDaphne
    worker_concurrency = 4
    queues = QUEUES

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Announced as the command-line worker announces itself (it loads the models; the API checks
        # for a live worker before queueing).
        cls.worker_context = started_worker(cls.queues, concurrency=cls.worker_concurrency)
        cls.worker_context.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.worker_context.__exit__(None, None, None)  # stops the engines too
        super().tearDownClass()

    def setUp(self):
        from django.conf import settings

        client = shared_client(settings.REDIS_URL)
        for name in client.scan_iter("deepseek:api:*"):  # limits counted by earlier tests
            client.delete(name)
        self.echo_spec = get_model("echo-reasoner")
        tasks._engines[self.echo_spec] = EchoEngine()
        self.user = get_user_model().objects.create_user("api-user", password="a long pass phrase 9")
        self.key = api_keys.do_create_key(self.user, "tests")[1]

    def tearDown(self):
        tasks._engines.pop(self.echo_spec, None)

    @property
    def base_url(self) -> str:
        return f"{self.live_server_url}/v1"

    def openai_client(self, **options):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self.key, max_retries=0, **options)
