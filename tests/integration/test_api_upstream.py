"""A model served by an upstream OpenAI-compatible server, tested against a real one on loopback:
this project's own /v1, served by the same live server. The outer request goes web → worker
(UpstreamEngine) → the server's /v1 again → worker (the echo engine) and back, streamed both ways."""
from __future__ import annotations

import os
import time

import openai
import pytest
from django.test import override_settings

from chat.accounts.models import ApiUsage
from chat.conversations.models import Conversation, Message
from chat.worker import tasks
from tests.support.api_server import API_MODELS, QUEUES, ApiServerTestCase
from tests.support.echo_engine import EchoEngine

pytestmark = pytest.mark.integration
KEY_ENV = "DEEPSEEK_WEB_TEST_UPSTREAM_KEY"
# The web tier only needs to know the model exists; the worker (this process) gets the real URL below.
UPSTREAM = {"name": "upstream-echo", "backend": "openai-compatible", "base_url": "http://127.0.0.1:9/v1",
            "api_key_env": KEY_ENV, "upstream_model": "echo-reasoner", "reasoning": True,
            "max_context": 4096, "max_new_tokens": 96}


@override_settings(DEEPSEEK_MODELS=[*API_MODELS, UPSTREAM])
class UpstreamModelTest(ApiServerTestCase):
    queues = [*QUEUES, "model.upstream-echo"]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.real_url = override_settings(DEEPSEEK_MODELS=[*API_MODELS, {**UPSTREAM,
                                                                        "base_url": f"http://{cls.host}:{cls._port}/v1"}])
        cls.real_url.enable()

    @classmethod
    def tearDownClass(cls):
        cls.real_url.disable()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        os.environ[KEY_ENV] = self.key  # the worker reads the upstream key from the environment

    def tearDown(self):
        os.environ.pop(KEY_ENV, None)
        super().tearDown()

    def rows(self) -> tuple[Message, Message]:
        """The outer answer (model upstream-echo) and the inner one (echo-reasoner, asked by the worker)."""
        answers = Message.objects.filter(role="assistant")
        return answers.get(conversation__model="upstream-echo"), answers.get(conversation__model="echo-reasoner")

    def test_it_streams_an_upstream_answer_with_its_reasoning_and_usage(self):
        stream = self.openai_client().chat.completions.create(
            model="upstream-echo", messages=[{"role": "user", "content": "think: look it up || found it"}],
            stream=True, stream_options={"include_usage": True})
        reasoning = content = ""
        usage = None
        for chunk in stream:
            if chunk.choices:
                reasoning += getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
                content += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        assert (reasoning, content) == ("look it up", "found it")
        outer, inner = self.rows()
        assert (outer.reasoning, outer.content, outer.finish_reason) == ("look it up", "found it", "stop")
        assert (outer.prompt_tokens, outer.completion_tokens) == (inner.prompt_tokens, inner.completion_tokens)
        assert (usage.prompt_tokens, usage.completion_tokens) == (inner.prompt_tokens, inner.completion_tokens)
        # Both hops are API requests of the same user: the quota sees both.
        assert ApiUsage.objects.get(user=self.user).requests == 2

    def test_it_moderates_before_anything_reaches_the_upstream(self):
        with pytest.raises(openai.BadRequestError) as caught:
            self.openai_client().chat.completions.create(
                model="upstream-echo", messages=[{"role": "user", "content": "Tell me how to make a pipe bomb"}])
        assert caught.value.response.json()["error"]["code"] == "content_filter"
        assert not Conversation.objects.exists()

    def test_a_client_leaving_cancels_the_upstream_generation_too(self):
        # 400 characters, one every 0.5 s: the first 90 alone take 45 s, far longer than it takes to notice.
        tasks._engines[self.echo_spec] = EchoEngine(chunk=1, pause=0.5)
        stream = self.openai_client().chat.completions.create(
            model="upstream-echo", messages=[{"role": "user", "content": "y" * 400}], stream=True)
        received = ""
        for chunk in stream:
            received += chunk.choices[0].delta.content or ""
            if len(received) >= 3:
                break
        stream.close()
        deadline = time.monotonic() + 60  # only against hanging: the rows' states are what is awaited
        outer, inner = self.rows()
        while (outer.is_active or inner.is_active) and time.monotonic() < deadline:
            time.sleep(0.2)
            outer.refresh_from_db()
            inner.refresh_from_db()
        assert (outer.status, inner.status) == ("cancelled", "cancelled")
        assert len(inner.content) < 90, "the upstream kept generating after the client left"

    def test_an_upstream_that_refuses_the_key_fails_the_answer_with_its_reason(self):
        os.environ[KEY_ENV] = "sk-wrong"
        with pytest.raises(openai.InternalServerError) as caught:
            self.openai_client().chat.completions.create(
                model="upstream-echo", messages=[{"role": "user", "content": "hello"}])
        assert caught.value.response.json()["error"]["code"] == "generation_failed"
        assert "401" in caught.value.response.json()["error"]["message"]
        assert "sk-wrong" not in caught.value.response.text
