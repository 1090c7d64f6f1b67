"""Schemathesis fuzzing of the live /v1 API against its own OpenAPI document: no 5xx, no schema violation."""
from __future__ import annotations

import collections
import copy
import json
import time
from typing import Any

import requests
import schemathesis
from django.test import override_settings
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.api_server import API_MODELS, ApiServerTestCase
from tests.support.conformance import assert_conforms

# Eight tokens keep a valid request at a fraction of a second, so hundreds fit in a few minutes.
FUZZ_MODELS = [{**spec, "max_new_tokens": 8} for spec in API_MODELS]
# Not positive_data_acceptance: a schema-valid body may still be refused (moderation, context
# length), which the document declares as 400.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
# Examples per operation and stage (positive, negative, answerable); GET /models takes no input.
EXAMPLES = {"POST /chat/completions": 250, "GET /models": 40}
MIN_REQUESTS = 500
TIMEOUT = 60  # seconds without a byte; a request that takes longer is reported as a hang, not waited on
STREAM_CHUNK = "CreateChatCompletionStreamResponse"


@override_settings(DEEPSEEK_MODELS=FUZZ_MODELS, API_REQUESTS_PER_MINUTE=0, API_CONCURRENT_REQUESTS=0,
                   API_TOKENS_PER_DAY=0, API_KEEPALIVE_SECONDS=0.3)
class ApiFuzzTests(ApiServerTestCase):
    def setUp(self):
        super().setUp()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()  # what the answers said, by stage
        self.failures: dict[tuple, str] = {}  # one report per distinct defect, with the request that showed it
        self.session = requests.Session()
        self.session.hooks["response"].append(self._count)

    def tearDown(self):
        self.session.close()
        super().tearDown()

    def _count(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        # A session hook sees every request that reached the wire, retries and re-sends included.
        self.statuses[str(response.status_code)] += 1

    def _fail(self, key: tuple, case: schemathesis.Case, what: str) -> None:
        if key not in self.failures:
            self.failures[key] = f"{what}\n    {case.as_curl_command(headers=self.auth)}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def test_generated_requests_get_documented_answers(self):
        document = requests.get(f"{self.base_url}/openapi.json", timeout=TIMEOUT).json()
        server = document["servers"][0]["url"]
        self.assertEqual(server, self.base_url)  # requests go where the document says
        config = schemathesis.Config.from_dict({
            "base-url": server, "request-timeout": TIMEOUT,
            "max-stream-events": 1000,  # read whole streams: the default 20 events could cut one short
            "output": {"sanitization": {"enabled": False}},  # exact reproducers: it hides max_tokens too
        })
        schema = schemathesis.openapi.from_dict(document, config=config)
        started = time.monotonic()
        operations = [result.ok() for result in schema.get_all_operations()]
        self.assertEqual(sorted(op.label for op in operations), sorted(EXAMPLES))
        for operation in operations:
            positive = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
            negative = operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
            stages = {"positive": positive, "negative": negative}
            if operation.method.upper() == "POST":
                stages["answerable"] = positive.map(answerable)
            for stage, strategy in stages.items():
                self._fuzz(strategy, stage, EXAMPLES[operation.label])
        sent = sum(self.statuses.values())
        print(f"\n/v1 fuzz: {sent} requests in {time.monotonic() - started:.0f} s; statuses "
              f"{dict(sorted(self.statuses.items()))}")
        print("/v1 fuzz outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items())))
        for report in self.failures.values():
            print(f"DEFECT: {report}")
        self.assertFalse(self.failures, "\n\n".join(self.failures.values()))
        self.assertGreaterEqual(sent, MIN_REQUESTS)

    def _fuzz(self, strategy: Any, stage: str, examples: int) -> None:
        @hypothesis_settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                             phases=[Phase.explicit, Phase.generate],  # failures are collected, not shrunk
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                    HealthCheck.data_too_large, HealthCheck.large_base_example])
        @given(case=strategy)
        def run(case: schemathesis.Case) -> None:
            self._send(case, stage)

        run()

    def _send(self, case: schemathesis.Case, stage: str) -> None:
        label = case.operation.label
        try:
            response = case.call(session=self.session, headers=self.auth, timeout=TIMEOUT)
        except requests.RequestException as exc:  # a hang or a dropped connection is a defect too
            self.statuses[type(exc).__name__] += 1
            self._fail((label, type(exc).__name__), case, f"{label} ({stage}): no answer: {exc}")
            return
        try:
            case.validate_response(response, checks=CHECKS, headers=self.auth)
        except FailureGroup as group:
            for failure in group.exceptions:
                self._fail((label, type(failure).__name__, failure.title, response.status_code), case,
                           f"{label} ({stage}) -> {response.status_code}: {failure.title}: {failure.message}")
        content_type = response.headers.get("content-type", [""])[0]
        self.outcomes[f"{label} {stage} {response.status_code} {outcome(response, content_type)}"] += 1
        if response.status_code == 200 and content_type.startswith("text/event-stream"):
            problem = stream_problem(response.content, response.stream_cut_short)
            if problem:
                self._fail((label, "stream", problem.split(":")[0]), case, f"{label} ({stage}) stream: {problem}")


def answerable(case: schemathesis.Case) -> schemathesis.Case:
    """The case with its texts made acceptable, still within the schema: most generated bodies are
    refused with 400 by design (a blank or NUL-bearing user message, an undecodable image part), so
    without this few answers and almost no streams would be checked."""
    body = copy.deepcopy(case.body)
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        for message in body["messages"]:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):  # parts: keep only the text ones' text (images would be refused)
                content = "\n".join(part["text"] for part in content
                                    if isinstance(part, dict) and isinstance(part.get("text"), str))
            if isinstance(content, str):  # lone surrogates and NUL are refused by design
                content = content.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
            if message.get("role") == "user" and not (isinstance(content, str) and content.strip()):
                content = "Say hello"
            message["content"] = content
        if not any(isinstance(m, dict) and m.get("role") == "user" for m in body["messages"]):
            body["messages"].append({"role": "user", "content": "Say hello"})  # one is required
        if body.get("stream_options") is not None:  # allowed only with stream: true (its description)
            body["stream"] = True
    case.body = body
    return case


def outcome(response: Any, content_type: str) -> str:
    if content_type.startswith("text/event-stream"):
        return "stream"
    try:
        return str(json.loads(response.content)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "json"


def stream_problem(body: bytes, cut_short: bool) -> str | None:
    """What is wrong with one streamed answer, or None: each `data:` chunk is a chat.completion.chunk
    (or an error chunk), and the stream ends with `data: [DONE]`."""
    if cut_short:
        return "cut short: the stream did not end within the timeout"
    events = [block for block in body.decode("utf-8").replace("\r\n", "\n").split("\n\n") if block.strip()]
    datas = []
    for block in events:
        lines = [line for line in block.split("\n") if not line.startswith(":")]  # keep-alive comments
        if lines:
            datas.append("\n".join(line.removeprefix("data:").removeprefix(" ") for line in lines
                                   if line.startswith("data:")))
    if not datas or datas[-1] != "[DONE]":
        return f"no final [DONE]: the last event is {datas[-1:]!r}"
    for data in datas[:-1]:
        try:
            chunk = json.loads(data)
        except ValueError:
            return f"not JSON: {data[:200]!r}"
        try:
            if "error" in chunk:
                assert_conforms("ErrorResponse", {"error": chunk["error"]})
            else:
                assert_conforms(STREAM_CHUNK, chunk)
        except AssertionError as exc:
            return f"chunk violates the schema: {exc}; chunk {data[:300]}"
        if "error" in chunk:  # a failure after the 200 headers went out: the stream's way of answering 5xx
            return f"error chunk: {data[:300]}"
    return None
