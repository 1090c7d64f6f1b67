"""The /v1 API end to end: the official `openai` client and raw HTTP against a live server, a real
Celery worker and the demo models. Every body and chunk is checked against OpenAI's schemas."""
from __future__ import annotations

import base64
import io
import json
import time

import httpx
import openai
import pytest
from PIL import Image

from chat.accounts.models import ApiUsage, TokenReservation
from chat.audit.models import AuditEvent
from chat.conversations import actions
from chat.conversations.models import Conversation, Message
from chat.worker import tasks
from inference.engine import Delta
from tests.support.api_server import ApiServerTestCase
from tests.support.conformance import assert_conforms
from tests.support.echo_engine import EchoEngine
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def sse_events(body: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order (comments skipped)."""
    return [block[len("data: "):] for block in body.split("\n\n") if block.startswith("data: ")]


def png_data_url(color=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class FailingEngine(EchoEngine):
    """Writes a little, then breaks, as a model that runs out of memory mid-answer would."""

    def generate(self, prompt_ids, params, stats):
        stats.prompt_tokens = len(prompt_ids)
        stats.completion_tokens = 1
        yield Delta(content="partial ")
        time.sleep(0.2)
        raise RuntimeError("CUDA out of memory (simulated)")


class CompletionsTest(ApiServerTestCase):
    def answer_row(self) -> Message:
        return Message.objects.filter(role="assistant", conversation__user=self.user).latest("created_at")

    def test_it_answers_a_completion_that_matches_the_saved_row(self):
        completion = self.openai_client().chat.completions.create(model="deepseek-chat", messages=[
            {"role": "system", "content": "You are a helpful assistant"}, {"role": "user", "content": "Hello"}])
        assert_conforms("CreateChatCompletionResponse", completion.model_dump(exclude_unset=True))
        row = self.answer_row()
        assert completion.id == f"chatcmpl-{row.id.hex}"
        assert completion.choices[0].message.content == row.content != ""
        assert completion.choices[0].finish_reason == row.finish_reason in ("stop", "length")
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
            row.prompt_tokens, row.completion_tokens)
        # The same road as the chat: a conversation (hidden from the sidebar), usage, an audit event.
        conversation = row.conversation
        assert conversation.source == Conversation.Source.API
        assert [m.role for m in conversation.messages.order_by("position")] == ["system", "user", "assistant"]
        assert not actions.conversations_for(self.user).exists()
        usage = ApiUsage.objects.get(user=self.user)
        assert (usage.requests, usage.total_tokens) == (1, completion.usage.total_tokens)
        # The answer's hold on the daily quota was replaced by what it spent (the worker settled it).
        assert usage.reserved_tokens == 0 and not TokenReservation.objects.exists()
        call = AuditEvent.objects.get(action="model_call", message_id=row.id)
        assert call.actor_id == self.user.id and call.completion_tokens == row.completion_tokens

    def test_it_streams_chunks_that_add_up_to_the_saved_answer(self):
        with httpx.stream("POST", f"{self.base_url}/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {self.key}"},
                          json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "Hi"}],
                                "stream": True, "stream_options": {"include_usage": True}}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            body = response.read().decode()
        events = sse_events(body)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        for chunk in chunks:
            assert_conforms("CreateChatCompletionStreamResponse", chunk)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert len({c["id"] for c in chunks}) == 1
        usage_chunk, finish_chunk = chunks[-1], chunks[-2]
        assert usage_chunk["choices"] == []
        assert finish_chunk["choices"][0]["finish_reason"] in ("stop", "length")
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        row = self.answer_row()
        assert text == row.content != ""
        total = row.prompt_tokens + row.completion_tokens
        assert usage_chunk["usage"] == {"prompt_tokens": row.prompt_tokens,
                                        "completion_tokens": row.completion_tokens, "total_tokens": total}

    def test_the_openai_client_streams_reasoning_and_content_apart(self):
        stream = self.openai_client().chat.completions.create(
            model="echo-reasoner", messages=[{"role": "user", "content": "think: first this || then that"}],
            stream=True)
        reasoning, content = "", ""
        for chunk in stream:
            assert_conforms("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
            delta = chunk.choices[0].delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            content += delta.content or ""
        assert (reasoning, content) == ("first this", "then that")
        completion = self.openai_client().chat.completions.create(
            model="echo-reasoner", messages=[{"role": "user", "content": "think: why || because"}])
        message = completion.choices[0].message
        assert (message.reasoning_content, message.content) == ("why", "because")

    def test_a_seed_repeats_an_answer_and_a_stop_string_ends_it(self):
        client = self.openai_client()

        def ask(**options) -> str:
            return client.chat.completions.create(
                model="deepseek-chat", messages=[{"role": "user", "content": "Tell me something"}],
                temperature=1.0, max_tokens=40, **options).choices[0].message.content

        first, again = ask(seed=1234), ask(seed=1234)
        assert first == again and len(first) > 10
        stop = first[len(first) // 2: len(first) // 2 + 3]
        cut = ask(seed=1234, stop=[stop, "never appears"])
        assert cut == first[: first.index(stop)]
        row = self.answer_row()
        assert row.finish_reason == "stop" and row.conversation.stop == [stop, "never appears"]

    def test_a_max_tokens_above_the_models_cap_is_cut_at_the_cap(self):
        completion = self.openai_client().chat.completions.create(
            model="echo-reasoner", messages=[{"role": "user", "content": "x" * 500}], max_tokens=4096)
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 96  # the model's max_new_tokens (tests/browser.py)

    def test_it_reads_image_parts_given_as_data_urls(self):
        completion = self.openai_client().chat.completions.create(model="deepseek-vl", max_tokens=8, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What colour is this?"},
                                         {"type": "image_url", "image_url": {"url": png_data_url()}}]}])
        assert completion.choices[0].finish_reason in ("stop", "length")
        question = Message.objects.get(role="user", conversation__user=self.user)
        assert question.content == "What colour is this?"
        assert question.attachments.count() == 1
        assert question.attachments.get().owner_id == self.user.id

    def test_an_image_for_a_text_model_or_a_broken_image_writes_nothing(self):
        client = self.openai_client()
        for model, url in (("deepseek-chat", png_data_url()), ("deepseek-vl", "data:image/png;base64,AAAA")):
            with pytest.raises(openai.BadRequestError):
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
                    {"type": "text", "text": "?"}, {"type": "image_url", "image_url": {"url": url}}]}])
        assert not Conversation.objects.exists()
        assert not self.user.attachments.exists()

    def test_a_failure_mid_stream_arrives_as_an_error_chunk_and_a_500_otherwise(self):
        tasks._engines[self.echo_spec] = FailingEngine()
        stream = self.openai_client().chat.completions.create(
            model="echo-reasoner", messages=[{"role": "user", "content": "go"}], stream=True)
        received = ""
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                received += chunk.choices[0].delta.content or ""
        assert received == "partial "
        assert "failed" in caught.value.message
        with pytest.raises(openai.InternalServerError) as caught:
            self.openai_client().chat.completions.create(model="echo-reasoner",
                                                         messages=[{"role": "user", "content": "go"}])
        assert caught.value.status_code == 500
        assert caught.value.response.json()["error"]["code"] == "generation_failed"
        assert set(Message.objects.filter(role="assistant").values_list("status", flat=True)) == {"failed"}
        # A failed answer gives its hold back too, and what it spent is counted.
        usage = ApiUsage.objects.get(user=self.user)
        assert usage.reserved_tokens == 0 and not TokenReservation.objects.exists() and usage.completion_tokens == 2

    def test_keep_alive_comments_flow_while_the_answer_is_slow(self):
        tasks._engines[self.echo_spec] = EchoEngine(chunk=8, pause=0.8)  # silences longer than 0.3 s
        with httpx.stream("POST", f"{self.base_url}/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {self.key}"},
                          json={"model": "echo-reasoner", "stream": True,
                                "messages": [{"role": "user", "content": "twenty-four characters.."}]}) as response:
            body = response.read().decode()
        assert ": keep-alive\n\n" in body
        assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                       for e in sse_events(body)[:-1] if json.loads(e)["choices"]) == "twenty-four characters.."

    def test_a_client_that_disconnects_mid_stream_cancels_its_generation(self):
        # 90 tokens: 45 s, far longer than the server needs to notice a client that left.
        tasks._engines[self.echo_spec] = EchoEngine(chunk=1, pause=0.5)
        with httpx.stream("POST", f"{self.base_url}/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {self.key}"},
                          json={"model": "echo-reasoner", "stream": True, "max_tokens": 90,
                                "messages": [{"role": "user", "content": "z" * 600}]}) as response:
            # However many keep-alive comments and role chunks come first (a loaded machine is slow to
            # start the answer): read until the first content chunk, then leave mid-answer.
            first_content = None
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    first_content = chunk["choices"][0]["delta"].get("content")
                    if first_content:
                        break
            assert first_content == "z"
        row = self.answer_row()
        deadline = time.monotonic() + 60  # only against hanging: the row's state is what is awaited
        while row.is_active and time.monotonic() < deadline:
            time.sleep(0.1)
            row.refresh_from_db()
        assert row.status == "cancelled"
        assert 0 < len(row.content) < 90, "the generation ran on after the client left"
        # The client left: the worker still settles the hold with what the cancelled answer spent.
        wait_for(lambda: not TokenReservation.objects.exists(), "the cancelled answer's hold to be settled")
        usage = ApiUsage.objects.get(user=self.user)
        assert (usage.reserved_tokens, usage.completion_tokens) == (0, row.completion_tokens)

    def test_deepseeks_own_requests_sample_works_unchanged(self):
        # From DeepSeek's API reference ("Create Chat Completion", Python `requests`), with our URL and key,
        # against the bare host as DeepSeek's samples use it.
        import requests

        url = f"{self.live_server_url}/chat/completions"
        payload = json.dumps({
            "messages": [{"content": "You are a helpful assistant", "role": "system"},
                         {"content": "Hi", "role": "user"}],
            "model": "deepseek-chat", "frequency_penalty": 0, "max_tokens": 4096, "presence_penalty": 0,
            "response_format": {"type": "text"}, "stop": None, "stream": False, "stream_options": None,
            "temperature": 1, "top_p": 1, "tools": None, "tool_choice": "none", "logprobs": False,
            "top_logprobs": None,
        })
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "Authorization": f"Bearer {self.key}"}
        response = requests.request("POST", url, headers=headers, data=payload, timeout=60)
        assert response.status_code == 200, response.text
        assert_conforms("CreateChatCompletionResponse", response.json())
        # And DeepSeek's openai sample, with the bare host as base URL.
        client = openai.OpenAI(api_key=self.key, base_url=self.live_server_url, max_retries=0)
        reply = client.chat.completions.create(model="deepseek-chat", stream=False, messages=[
            {"role": "system", "content": "You are a helpful assistant"}, {"role": "user", "content": "Hello"}])
        assert reply.choices[0].message.content
