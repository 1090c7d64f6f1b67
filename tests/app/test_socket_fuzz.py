"""Hypothesis-generated frames on the chat socket: each gets a known error or its normal answer, never a crash."""
from __future__ import annotations

import collections
import io
import json
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image

from chat.conversations import actions, uploads
from chat.conversations.consumers import ChatConsumer, _shown_type
from chat.conversations.models import Attachment, Conversation, Message
from chat.core.errors import ChatError
from tests.support.sockets import open_socket, receive, send

pytestmark = pytest.mark.django_db(transaction=True)

# Every code a socket error frame may carry (chat/conversations/: consumers.py, actions.py, uploads.py).
KNOWN_CODES = {
    "rate_limited", "invalid_frame", "frame_too_large", "invalid_json", "unknown_type", "invalid_id", "not_found",
    "unknown_model", "empty_message", "invalid_content", "prompt_too_long", "content_filter", "busy",
    "vision_unsupported", "not_running", "too_many_attachments",
    "unavailable",  # the database is down (chat/core/outage.py): not a crash, the user retries
}
COMMANDS = sorted(ChatConsumer.COMMANDS)
MAX_PROMPT = django_settings.MAX_PROMPT_CHARS
FRAME_LIMIT = MAX_PROMPT * 6 + 4096  # ChatConsumer._parse's bound
DEPTH = sys.getrecursionlimit()
# 200 batches of up to 8 frames: about 750 frames in 40 s, so the whole file stays inside 90 s.
FUZZ = hypothesis_settings(derandomize=True, database=None, deadline=None, max_examples=200,
                           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                  HealthCheck.data_too_large])


# ---- what is sent -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """An id from the world fixture, filled in when the frame is sent (strategies are built before it exists)."""

    name: str


@dataclass(frozen=True)
class Raw:
    """A frame sent as it is: `text` or `data` (a binary frame)."""

    text: str | None = None
    data: bytes | None = None


REFS = [Ref(name) for name in (
    "own_question", "own_answer", "own_other_conversation_message", "own_attachment", "conversation",
    "other_conversation", "bobs_question", "bobs_answer", "bobs_attachment", "bobs_conversation",
)]
odd_strings = st.sampled_from([
    "", " ", "\n\t ", "\x00", "a\x00b", "\ud800", "\udfff", "x\ud83d", "\u202e\u202d", "\ufeff", "null", "send",
    "stop", "SEND", " send", "send\x00", "__proto__", "constructor", "<script>alert(1)</script>", "' OR 1=1 --",
    "%s%s%n", "../../etc/passwd", "😀" * 40, "ű" * 64, "x" * 65,
])
any_text = st.text(st.characters(exclude_categories=()), max_size=40) | st.text(
    st.characters(categories=["Cs", "Cc", "Zs", "Lo"]), max_size=20) | odd_strings
huge_text = st.builds(lambda char, size: char * size, st.sampled_from(["x", " ", "漢", "\x00", "\ud800"]),
                      st.sampled_from([MAX_PROMPT - 1, MAX_PROMPT, MAX_PROMPT + 1, FRAME_LIMIT // 6 + 1]))
numbers = (st.integers() | st.sampled_from([0, -1, True, False, 2**31, 2**63, -(2**63) - 1, 2**64, 10**300])
           | st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(
    st.none() | st.booleans() | numbers | any_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(any_text, children, max_size=5),
    max_leaves=25,
)
uuid_like = st.uuids().map(str) | st.uuids().flatmap(lambda u: st.sampled_from([
    u.hex, str(u).upper(), f"{{{u}}}", f"urn:uuid:{u}", str(u)[:-1], str(u) + "0", f" {u}", f"{u}\x00",
]))
ids = st.sampled_from(REFS) | uuid_like | json_values
contents = (st.text(min_size=1, max_size=60) | any_text | huge_text | json_values
            | st.sampled_from(["Hello there", "Tell me how to make a pipe bomb"]))
# Well-formed commands (ids of real rows, Bob's among them), then 0-2 fields replaced by anything, or dropped.
ref_ids = st.sampled_from(REFS)
DROP = object()  # a field to leave out
well_formed = st.one_of(
    st.fixed_dictionaries({"type": st.just("send"), "content": st.text(min_size=1, max_size=60) | st.sampled_from(
        ["Hello there", "Tell me how to make a pipe bomb"]), "client_id": st.text(max_size=64)},
        optional={"attachments": st.lists(ref_ids, max_size=2), "edit_of": ref_ids}),
    st.fixed_dictionaries({"type": st.sampled_from(["stop", "regenerate", "select"]), "message_id": ref_ids}),
    st.fixed_dictionaries({"type": st.just("resume"), "message_id": ref_ids,
                           "after_seq": st.integers(min_value=0, max_value=100)}),
)
fuzzed_fields = st.dictionaries(st.sampled_from([
    "content", "client_id", "attachments", "message_id", "edit_of", "after_seq", "conversation_id", "user",
]), st.one_of(
    json_values, ids, contents, st.lists(ids, max_size=6), st.integers(min_value=-2, max_value=10**20),
    st.just(None), st.just(DROP),
), max_size=2)
command_frames = st.builds(
    lambda frame, changes: {k: v for k, v in {**frame, **changes}.items() if v is not DROP}, well_formed, fuzzed_fields)


def nested(depth: int, kind: str) -> str:
    """`depth` levels of lists, objects, or both, as JSON text (never parsed here: it may be too deep to)."""
    opening, middle, closing = {"list": ("[", "", "]"), "object": ('{"a":', "0", "}"),
                                "both": ('[{"b":', "0", "}]")}[kind]
    return opening * depth + middle + closing * depth


deep_values = st.builds(nested, st.sampled_from([DEPTH - 60, DEPTH - 30, DEPTH - 10, DEPTH, 20_000, 100_000]),
                        st.sampled_from(["list", "object", "both"]))
raw_texts = st.one_of(
    st.text(max_size=80).map(lambda t: Raw(text=t)),  # almost never JSON
    deep_values.map(lambda v: Raw(text=v)),
    # Deep nesting where a command reads the value, not just where the parser sees it.
    st.tuples(st.sampled_from(COMMANDS), st.sampled_from(["message_id", "edit_of", "attachments", "content",
                                                          "client_id", "after_seq", "type"]), deep_values).map(
        lambda t: Raw(text=json.dumps({"type": t[0], "content": "hi"})[:-1] + f', "{t[1]}": {t[2]}}}')),
    st.sampled_from([
        '{"type": "resume", "message_id": "00000000-0000-0000-0000-000000000000", "after_seq": NaN}',
        '{"type": "resume", "after_seq": Infinity}', '{"type": "resume", "after_seq": -Infinity}',
        '{"type": "resume", "after_seq": 1e999}', '{"type": "resume", "after_seq": ' + "9" * 5000 + "}",
        '{"type": "send", "content": ' + "1" * 4301 + "}", '{"type": "send", "type": "stop"}',
        '\ufeff{"type": "stop"}', '{"type": "send", "content": "a"', '{"type": "send", "content": "\\ud800"}',
        '{"type": "\\ud800"}', '{"type": "\\udfff\\u0000"}', '{"type": "send", "client_id": "\\ud800"}',
        '{"type": "send", "content": "hi", "client_id": "\\u0000"}',
        '{"type": "send", "content": "hi", "client_id": "\\udfff"}', "null", "true", "0", '""', "[]", "{}",
        " " * (FRAME_LIMIT + 1), json.dumps({"type": "send", "content": "x" * FRAME_LIMIT}),
    ]).map(lambda t: Raw(text=t)),
)
raw_bytes = (st.binary(max_size=64) | st.sampled_from([
    b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b'{"type": "stop"}', b"\x00" * 10, b"\x80" * (FRAME_LIMIT + 1),
])).map(lambda b: Raw(data=b))
json_frames = st.tuples(json_values | command_frames, st.booleans())
commands_on_the_wire = command_frames.map(lambda f: (f, False))
# Commands get half the draws: the other kinds end at the parser, commands reach the actions and the database.
frames = st.sampled_from([commands_on_the_wire] * 3 + [json_frames, raw_texts, raw_bytes]).flatmap(lambda s: s)


# ---- the world the frames land in ---------------------------------------------------------------
def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(out, "PNG")
    return out.getvalue()


def user_without_password(django_user_model, name: str):
    """Hashing a password costs more than most tests here: the socket signs in by session."""
    user = django_user_model(username=name)
    user.set_unusable_password()
    user.save()
    return user


@pytest.fixture
def alice(django_user_model):
    return user_without_password(django_user_model, "alice")


@pytest.fixture
def bob(django_user_model):
    return user_without_password(django_user_model, "bob")


@pytest.fixture
def world(alice, bob, settings, tmp_path, broker) -> dict[str, str]:
    """Alice's chat (a finished exchange), another of hers, and Bob's chat with an answer in progress."""
    settings.MEDIA_ROOT = tmp_path / "media"
    # The flood limit has its own test (test_consumer.py); here frames should reach the commands.
    settings.SOCKET_FRAME_BURST = 10**6
    settings.SOCKET_FRAMES_PER_SECOND = 10**6
    refs: dict[str, str] = {}
    mine = Conversation.objects.create(user=alice, model="deepseek-chat")
    question = Message.objects.create(conversation=mine, position=1, role="user", content="first")
    answer = Message.objects.create(conversation=mine, position=2, parent=question, role="assistant",
                                    status="done", content="an answer", finish_reason="stop")
    other = Conversation.objects.create(user=alice, model="deepseek-chat")
    elsewhere = Message.objects.create(conversation=other, position=1, role="user", content="elsewhere")
    theirs = Conversation.objects.create(user=bob, model="deepseek-chat", title="bob's")
    bobs_question = Message.objects.create(conversation=theirs, position=1, role="user", content="bob's secret")
    bobs_answer = Message.objects.create(conversation=theirs, position=2, parent=bobs_question, role="assistant",
                                         status="pending")
    refs.update(conversation=str(mine.id), own_question=str(question.id), own_answer=str(answer.id),
                own_other_conversation_message=str(elsewhere.id), other_conversation=str(other.id),
                bobs_conversation=str(theirs.id), bobs_question=str(bobs_question.id), bobs_answer=str(bobs_answer.id),
                own_attachment=str(uploads.do_upload(alice, png()).id),
                bobs_attachment=str(uploads.do_upload(bob, png()).id))
    return refs


def snapshot(user) -> list:
    """Every row of the user's a socket must not change, each with all its fields."""
    return [sorted(map(repr, rows.values())) for rows in (
        Conversation.objects.filter(user=user), Message.objects.filter(conversation__user=user),
        Attachment.objects.filter(owner=user))]


def resolve(value: Any, refs: dict[str, str]) -> Any:
    if isinstance(value, Ref):
        return refs[value.name]
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, refs) for k, v in value.items()}
    return value


def wire(frame: Any, refs: dict[str, str]) -> Raw:
    if isinstance(frame, Raw):
        return frame
    value, ascii_only = frame
    value = resolve(value, refs)
    text = json.dumps(value, ensure_ascii=ascii_only)
    if not encodes(text):
        # A WebSocket text frame is UTF-8: a lone surrogate can only arrive escaped, as \ud800.
        text = json.dumps(value)
    return Raw(text=text)


def expected_code(raw: Raw) -> set[str] | None:
    """The error a frame must get when it is not a command at all; None when it is one."""
    if raw.text is None:
        return {"invalid_frame"}
    if len(raw.text) > FRAME_LIMIT:
        return {"frame_too_large"}
    try:
        value = json.loads(raw.text)
    except RecursionError:
        # This thread's stack is deeper than the server's: the server may parse what fails here, and then
        # the frame may well be a command.
        return KNOWN_CODES
    except ValueError:
        return {"invalid_json"}
    if not isinstance(value, dict):
        return {"invalid_frame"}
    if value.get("type") not in COMMANDS:
        return {"unknown_type"}
    return None


# ---- the runner -------------------------------------------------------------------------------
class Fuzzer:
    """Sends each batch on a fresh socket; after every frame a probe's answer marks where its replies end."""

    def __init__(self, user, refs: dict[str, str]) -> None:
        self.user, self.refs = user, refs
        self.sent = 0
        self.codes: collections.Counter[str] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()  # (frame, first reply)
        self.probe = str(uuid.uuid4())  # a stop for nothing: its not_found answer marks the end of a frame's replies

    def run(self, batch: list) -> None:
        async_to_sync(self._run)([wire(frame, self.refs) for frame in batch])
        # No worker runs: answers a valid send queued stay pending; free the chat for the next example.
        Message.objects.filter(conversation__user=self.user, status__in=Message.ACTIVE).update(
            status="cancelled", finish_reason="cancelled")

    async def _run(self, batch: list[Raw]) -> None:
        socket = await open_socket(self.user, self.refs["conversation"])
        try:
            for raw in batch:
                # send_input, not send_to: an empty frame is a frame too.
                await socket.send_input({"type": "websocket.receive", "text": raw.text} if raw.text is not None
                                        else {"type": "websocket.receive", "bytes": raw.data})
                self.sent += 1
                replies = await self._replies(socket, raw)
                errors = [r for r in replies if r["type"] == "error"]
                self.outcomes[label(raw), errors[0]["code"] if errors else "+".join(r["type"] for r in replies)] += 1
                expected = expected_code(raw)
                if expected is not None:
                    assert len(errors) == 1 and errors[0]["code"] in expected, (raw_repr(raw), replies)
        finally:
            await socket.disconnect()

    async def _replies(self, socket, raw: Raw) -> list[dict[str, Any]]:
        await socket.send_to(text_data=json.dumps({"type": "stop", "message_id": self.probe}))
        replies = []
        while True:
            output = await socket.receive_output(timeout=20)
            assert output["type"] == "websocket.send", f"the socket closed after {raw_repr(raw)}: {output}"
            text = output.get("text")
            assert isinstance(text, str), (raw_repr(raw), output)
            # What daphne does with every text frame; a lone surrogate here raises in the consumer.
            assert encodes(text), f"a reply to {raw_repr(raw)} is not UTF-8 text: {text[:300]!r}"
            reply = json.loads(text)
            if reply == {"type": "error", "code": "not_found", "message": reply.get("message"),
                         "message_id": self.probe}:
                return replies
            self.kinds[reply["type"]] += 1
            assert reply["type"] in ("error", "message", "done"), (raw_repr(raw), reply)
            if reply["type"] == "error":
                self.codes[reply["code"]] += 1
                assert reply["code"] in KNOWN_CODES, (raw_repr(raw), reply)
                assert isinstance(reply["message"], str) and reply["message"], (raw_repr(raw), reply)
            replies.append(reply)


def label(raw: Raw) -> str:
    """What kind of frame it was, for the report."""
    if raw.text is None:
        return "binary"
    try:
        value = json.loads(raw.text)
    except (ValueError, RecursionError):
        return "not JSON"
    if isinstance(value, dict) and value.get("type") in COMMANDS:
        return value["type"]
    return "JSON " + type(value).__name__


def encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def raw_repr(raw: Raw) -> str:
    shown = raw.text if raw.text is not None else raw.data
    return repr(shown[:300]) + (f"… ({len(shown)} long)" if len(shown) > 300 else "")


@pytest.fixture
def fuzzer(world, alice):
    return Fuzzer(alice, world)


def report(name: str, fuzzer: Fuzzer, started: float) -> None:
    print(f"\n{name}: {fuzzer.sent} frames in {time.monotonic() - started:.1f} s; replies {dict(fuzzer.kinds)}; "
          f"error codes {dict(sorted(fuzzer.codes.items()))}")
    for (frame, outcome), count in sorted(fuzzer.outcomes.items()):
        print(f"  {frame:>12} → {outcome or 'nothing'}: {count}")


def test_generated_frames_get_known_errors_or_normal_answers_and_touch_no_one_elses_rows(fuzzer, world, alice,
                                                                                          bob):
    # Given alice's socket, and rows of bob's and of alice's other chat it must never touch
    before = snapshot(bob)
    started = time.monotonic()

    # When hypothesis sends batches of generated frames
    @FUZZ
    @given(st.lists(frames, min_size=1, max_size=8))
    def each(batch):
        fuzzer.run(batch)

    each()
    report("socket fuzz", fuzzer, started)
    # Then every frame was answered (the checks ran in Fuzzer), nothing crashed, and no one else's rows changed
    assert "server_error" not in fuzzer.codes
    assert fuzzer.sent > 300
    assert snapshot(bob) == before
    assert list(Message.objects.filter(conversation_id=world["other_conversation"]).values_list("id", flat=True)) \
        == [uuid.UUID(world["own_other_conversation_message"])]


# ---- what the fuzzer found, one test each -------------------------------------------------------
def nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


async def reply_text(socket) -> str:
    output = await socket.receive_output(timeout=10)
    assert output["type"] == "websocket.send"
    return output["text"]


async def test_an_unknown_type_with_a_lone_surrogate_is_quoted_in_utf8_text(world, alice):
    # Given a frame whose type is "\ud800": valid JSON and valid UTF-8 on the wire
    socket = await open_socket(alice, world["conversation"])
    await send(socket, '{"type": "\\ud800"}')
    # Then the error quoting it is still UTF-8 (daphne encodes each text frame: a raw surrogate raised there,
    # in the middle of the error reply, and took the consumer down)
    text = await reply_text(socket)
    assert encodes(text) and json.loads(text)["code"] == "unknown_type"
    await send(socket, {"type": "stop", "message_id": str(uuid.uuid4())})
    assert (await receive(socket))["code"] == "not_found"  # still open
    await socket.disconnect()


@pytest.mark.parametrize("client_id", ["\ud800", "a\x00b"])
async def test_a_client_id_that_cannot_be_stored_is_refused_and_nothing_is_written(world, alice, client_id):
    # A lone surrogate failed the INSERT (server_error); PostgreSQL refuses a NUL the same way.
    socket = await open_socket(alice, world["conversation"])
    before = await database_sync_to_async(Message.objects.count)()
    await send(socket, json.dumps({"type": "send", "content": "hi", "client_id": client_id}))
    assert (await receive(socket))["code"] == "invalid_frame"
    assert await database_sync_to_async(Message.objects.count)() == before
    await socket.disconnect()


def test_ids_nested_deeper_than_the_stack_are_invalid_ids_not_recursion_errors(world, alice):
    # Given a value str() cannot write out: JSON this deep parses in a shallow stack and then raised
    # RecursionError in the database thread, where the stack was deeper (which is why the fuzzer saw it come and go)
    deep = nested_list(100_000)
    for call in (lambda: actions.get_message(alice, deep), lambda: actions.get_conversation(alice, deep),
                 lambda: uploads.check_attachments(alice, [deep]), lambda: uploads.check_attachments(alice, [7])):
        with pytest.raises(ChatError) as refused:
            call()
        assert refused.value.code == "invalid_id"
    assert _shown_type(deep) == "[…]" and _shown_type({"a": deep}) == "{…}"
    # Ids that are text still work, in any form uuid.UUID reads.
    assert actions.get_message(alice, world["own_answer"].upper()).role == "assistant"


@pytest.mark.parametrize("field", ["message_id", "edit_of", "attachments"])
async def test_a_deeply_nested_id_in_a_frame_is_an_invalid_id(world, alice, field):
    socket = await open_socket(alice, world["conversation"])
    deep = "[" * (DEPTH - 30) + "]" * (DEPTH - 30)
    command = "send" if field != "message_id" else "select"
    await send(socket, json.dumps({"type": command, "content": "hi"})[:-1] + f', "{field}": {deep}}}')
    assert (await receive(socket))["code"] in ("invalid_id", "invalid_json")
    await socket.disconnect()


async def test_deep_nesting_is_refused_cheaply(world, alice):
    socket = await open_socket(alice, world["conversation"])
    for depth, code in ((100_000, "frame_too_large"), (FRAME_LIMIT // 2 - 10, "invalid_json")):
        started = time.monotonic()
        await send(socket, "[" * depth + "]" * depth)
        assert (await receive(socket))["code"] == code
        assert time.monotonic() - started < 1
    await socket.disconnect()
