"""Exports and imports: Markdown and JSON files out, JSON files in, validated before anything is written."""
import json

import pytest
from django.conf import settings

from chat.conversations.actions import ChatError
from chat.conversations.exports import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    IMPORT_MAX_BYTES,
    IMPORT_MAX_MESSAGES,
    do_import,
    export_filename,
    export_json,
    export_markdown,
)
from chat.conversations.models import Conversation, Message
from chat.core.served_models import default_model
from tests.support.xss_corpus import PAYLOADS

pytestmark = pytest.mark.django_db


def _tree(user) -> tuple[Conversation, dict[str, Message]]:
    """A question with a regenerated answer, then an edited question with its own answer; the first branch on show."""
    conversation = Conversation.objects.create(
        user=user, model="deepseek-chat", title="Trees\nand branches", system_prompt="Answer briefly.",
        temperature=0.3, top_p=0.9, max_tokens=50,
    )

    def add(position, role, content, parent=None, **extra):
        return Message.objects.create(conversation=conversation, position=position, role=role, content=content,
                                      parent=parent, **extra)

    m = {}
    m["q1"] = add(1, "user", "What is a tree?")
    m["a1"] = add(2, "assistant", "A graph without cycles.", m["q1"], reasoning="Think of graphs.\n\nThen trees.",
                  finish_reason="stop", prompt_tokens=11, completion_tokens=7)
    m["a1b"] = add(3, "assistant", "Half an ans", m["q1"], status="failed", error="worker died")
    m["q2"] = add(4, "user", "What is a forest?")
    m["a2"] = add(5, "assistant", "Many trees.", m["q2"], status="cancelled", finish_reason="cancelled")
    conversation.current_leaf = m["a1"]
    conversation.save()
    return conversation, m


def _file(**changes) -> dict:
    """A small valid export file; `changes` replace its top-level keys."""
    data = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "title": "From a file", "model": "deepseek-chat",
        "settings": {"system_prompt": "", "temperature": None, "top_p": None, "max_tokens": None},
        "current_leaf": "m2",
        "messages": [
            {"id": "m1", "parent_id": None, "role": "user", "content": "Hello"},
            {"id": "m2", "parent_id": "m1", "role": "assistant", "content": "Hi there", "status": "done"},
        ],
    }
    data.update(changes)
    return data


def _raw(data) -> bytes:
    return json.dumps(data).encode()


def _rows() -> list[tuple]:
    rows = list(Message.objects.order_by("id").values_list()) + list(Conversation.objects.order_by("id").values_list())
    # JSON fields (a conversation's stop strings) as text, so rows can be compared as sets.
    return [tuple(repr(v) if isinstance(v, (list, dict)) else v for v in row) for row in rows]


def test_it_exports_json_with_every_branch_and_the_settings(alice):
    # Given a conversation with two edited branches and a regeneration
    conversation, m = _tree(alice)
    # When it is exported as JSON
    data = export_json(conversation)
    # Then every message of the tree is there, in creation order, with ids as strings
    assert data["format"] == EXPORT_FORMAT and data["version"] == EXPORT_VERSION
    assert data["title"] == "Trees\nand branches" and data["model"] == "deepseek-chat"
    assert data["settings"] == {"system_prompt": "Answer briefly.", "temperature": 0.3, "top_p": 0.9, "max_tokens": 50}
    assert data["current_leaf"] == str(m["a1"].id)
    assert [x["content"] for x in data["messages"]] == [
        "What is a tree?", "A graph without cycles.", "Half an ans", "What is a forest?", "Many trees."]
    assert [x["parent_id"] for x in data["messages"]] == [None, str(m["q1"].id), str(m["q1"].id), None,
                                                          str(m["q2"].id)]
    first_answer = data["messages"][1]
    assert first_answer["id"] == str(m["a1"].id) and first_answer["reasoning"] == "Think of graphs.\n\nThen trees."
    assert first_answer["usage"] == {"prompt_tokens": 11, "completion_tokens": 7}
    assert [x["status"] for x in data["messages"]] == ["done", "done", "failed", "done", "cancelled"]
    # And it is plain JSON, times in ISO 8601
    assert json.loads(json.dumps(data)) == data
    assert data["created_at"] == conversation.created_at.isoformat() and "T" in data["exported_at"]


def test_it_exports_markdown_of_the_branch_on_show_with_thinking_and_system_prompt(alice):
    # Given a conversation whose first branch is on show
    conversation, _ = _tree(alice)
    # When it is exported as Markdown
    text = export_markdown(conversation)
    # Then the title (on one line), the system prompt, and the branch on show appear in order
    assert text.startswith("# Trees and branches\n")
    order = ["## System prompt", "Answer briefly.", "## You", "What is a tree?", "## Assistant",
             "> **Thinking**", "> Think of graphs.\n>\n> Then trees.", "A graph without cycles."]
    assert [text.index(part) for part in order] == sorted(text.index(part) for part in order)
    # And the other versions do not
    assert "What is a forest?" not in text and "Many trees." not in text and "Half an ans" not in text


def test_it_notes_stopped_and_failed_answers_in_markdown(alice):
    # Given a branch with a stopped answer, and another with a failed one
    conversation, m = _tree(alice)
    conversation.current_leaf = m["a2"]
    conversation.save()
    stopped = export_markdown(conversation)
    conversation.current_leaf = m["a1b"]
    conversation.save()
    failed = export_markdown(conversation)
    # Then each says so in italics after whatever text it had
    assert "Many trees.\n\n*The answer was stopped before it was finished.*" in stopped
    assert "Half an ans\n\n*The answer failed.*" in failed


def test_it_names_export_files_in_safe_ascii(alice):
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat", title='Ünïcode "quotes"/../\r\nx')
    assert export_filename(conversation, "md") == "unicode-quotes-x.md"
    conversation.title = "日本語"
    assert export_filename(conversation, "json") == "conversation.json"
    conversation.title = "long " * 40
    name = export_filename(conversation, ".md")
    assert name.endswith(".md") and len(name) <= 63 and name.isascii()


def test_it_round_trips_a_tree_into_a_new_conversation_with_new_ids(alice):
    # Given alice's conversation with branches, exported as JSON
    original, m = _tree(alice)
    before = _rows()
    raw = _raw(export_json(original))
    # When alice imports the file
    copy = do_import(alice, raw)
    # Then a new conversation of hers holds the same title, settings, texts, roles and tree
    copy.refresh_from_db()
    assert copy.id != original.id and copy.user == alice
    assert (copy.title, copy.model, copy.system_prompt, copy.temperature, copy.top_p, copy.max_tokens) == (
        "Trees and branches", "deepseek-chat", "Answer briefly.", 0.3, 0.9, 50)
    olds = list(original.messages.order_by("position"))
    news = list(copy.messages.order_by("position"))
    fields = ("position", "role", "content", "reasoning", "status", "finish_reason", "prompt_tokens",
              "completion_tokens")
    assert [[getattr(x, f) for f in fields] for x in news] == [[getattr(x, f) for f in fields] for x in olds]
    # And every id is new, the parents and the current leaf mapped to the new ids
    assert not {x.id for x in news} & {x.id for x in olds}
    new_for_old = {old.id: new.id for old, new in zip(olds, news, strict=True)}
    assert [x.parent_id for x in news] == [new_for_old.get(x.parent_id) for x in olds]
    assert copy.current_leaf_id == new_for_old[m["a1"].id]
    # And the original is untouched
    assert [row for row in _rows() if row in before] == before


def test_a_file_exported_by_alice_and_imported_by_bob_is_bobs(alice, bob):
    # Given alice's exported conversation
    original, _ = _tree(alice)
    raw = _raw(export_json(original))
    alices_rows = _rows()
    # When bob imports it
    copy = do_import(bob, raw)
    # Then bob owns the copy, and alice's conversation and messages are as they were
    assert copy.user == bob and Conversation.objects.filter(user=bob).count() == 1
    assert Message.objects.filter(conversation__user=bob).count() == 5
    assert set(alices_rows) <= set(_rows())
    assert Conversation.objects.filter(user=alice).get() == original


def test_a_file_without_parent_ids_is_read_as_one_linear_branch(alice):
    # Given a file whose messages name no parents at all
    messages = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                {"role": "user", "content": "three"}]
    # When it is imported
    conversation = do_import(alice, _raw(_file(messages=messages, current_leaf=None)))
    # Then each message follows the one before it, and the last is on show
    rows = list(conversation.messages.order_by("position"))
    assert [x.parent_id for x in rows] == [None, rows[0].id, rows[1].id]
    assert conversation.current_leaf_id == rows[2].id


def test_an_unknown_current_leaf_shows_the_newest_messages_branch(alice):
    messages = [{"id": "q", "role": "user", "content": "one"}, {"id": "a", "parent_id": "q", "role": "assistant",
                                                                "content": "two"}, {"id": "q2", "role": "user",
                                                                                    "content": "edited"}]
    conversation = do_import(alice, _raw(_file(messages=messages, current_leaf="no-such-id")))
    assert conversation.current_leaf == conversation.messages.get(position=3)


def test_it_imports_a_half_written_answer_as_cancelled(alice):
    messages = [{"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi th", "status": "streaming"}]
    conversation = do_import(alice, _raw(_file(messages=messages)))
    answer = conversation.messages.get(role="assistant")
    assert answer.status == "cancelled" and answer.finish_reason == "cancelled" and answer.content == "Hi th"
    assert not conversation.messages.filter(status__in=Message.ACTIVE).exists()


def test_an_unknown_model_falls_back_to_the_default_model(alice):
    conversation = do_import(alice, _raw(_file(model="gpt-17-from-another-server")))
    assert conversation.model == default_model().name


def test_a_blank_title_becomes_imported_chat(alice):
    assert do_import(alice, _raw(_file(title="  "))).title == "Imported chat"


def _messages(*changes) -> list[dict]:
    """The base file's messages plus a third one, then `changes` (index, key, value) applied."""
    messages = _file()["messages"] + [{"id": "m3", "parent_id": "m2", "role": "user", "content": "More"}]
    for index, key, value in changes:
        messages[index][key] = value
    return messages


BAD_FILES = [
    pytest.param(b"{not json", "not valid JSON", id="not-json"),
    pytest.param(b"\xff\xfe\x00garbage\x80\x81", "not UTF-8", id="binary-garbage"),
    pytest.param(b"[1, 2]", "must hold a JSON object", id="a-json-array"),
    pytest.param(_raw(_file(format="something-else")), "not a conversation export", id="wrong-format"),
    pytest.param(_raw(_file(version=2)), "version is not supported", id="wrong-version"),
    pytest.param(_raw(_file()) + b" " * IMPORT_MAX_BYTES, "the limit is 5242880 bytes", id="too-large"),
    pytest.param(b"[" * 100_000, "nested too deeply", id="deeply-nested"),
    pytest.param(_raw(_file(messages=_messages((1, "role", "robot")))),
                 "Message 2: role must be user, assistant or system.", id="bad-role"),
    pytest.param(_raw(_file(messages=_messages((0, "content", ["Hello"])))), "Message 1: content must be text.",
                 id="content-not-a-string"),
    pytest.param(_raw(_file(messages=_messages((1, "content", "Hi\x00there")))),
                 "Message 2: content contains a NUL character", id="nul-in-content"),
    pytest.param(_raw(_file(messages=_messages((0, "content", "x" * (settings.MAX_PROMPT_CHARS + 1))))),
                 f"Message 1: content is {settings.MAX_PROMPT_CHARS + 1} characters long", id="over-long-user-content"),
    pytest.param(_raw(_file(messages=_messages((1, "parent_id", "m3")))),
                 "Message 2: parent_id must name an earlier message", id="forward-parent"),
    pytest.param(_raw(_file(messages=_messages((1, "parent_id", "nobody")))),
                 "Message 2: parent_id must name an earlier message", id="unknown-parent"),
    pytest.param(_raw(_file(messages=_messages((2, "id", "m1")))), "Message 3: the id 'm1' is used by an earlier",
                 id="duplicate-id"),
    pytest.param(_raw(_file(messages=[{"role": "user", "content": ""}] * (IMPORT_MAX_MESSAGES + 1))),
                 f"has {IMPORT_MAX_MESSAGES + 1} messages; the limit is {IMPORT_MAX_MESSAGES}", id="too-many-messages"),
    pytest.param(_raw(_file(messages={"m1": "Hello"})), "Messages must be a list.", id="messages-not-a-list"),
    pytest.param(_raw(_file(settings={"temperature": 5})), "Settings: temperature must be a number from 0 to 2",
                 id="temperature-5"),
    pytest.param(_raw(_file(settings={"temperature": True})), "Settings: temperature must be a number",
                 id="temperature-true"),
    pytest.param(_raw(_file(settings={"top_p": 0})), "Settings: top_p must be a number above 0 and at most 1",
                 id="top-p-0"),
    pytest.param(_raw(_file(settings={"system_prompt": "s" * 4001})),
                 "The system prompt is 4001 characters long; the limit is 4000.", id="over-long-system-prompt"),
    pytest.param(_raw(_file(title="t" * 201)), "The title is 201 characters long; the limit is 200.",
                 id="over-long-title"),
    pytest.param(_raw(_file(title="a\x00b")), "The title contains a NUL character", id="nul-in-title"),
    pytest.param(_raw(_file(messages=_messages((2, "content", "lone \ud800 surrogate")))),
                 "Message 3: content contains characters that are not valid Unicode.", id="lone-surrogate"),
    pytest.param(_raw(_file(messages=_messages((2, "role", "robot")))), "Message 3: role must be", id="last-message"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_FILES)
def test_it_refuses_a_bad_file_and_writes_nothing(alice, raw, message):
    # Given alice already has a conversation
    _tree(alice)
    before = _rows()
    # When she imports a bad file
    with pytest.raises(ChatError) as caught:
        do_import(alice, raw)
    # Then the error names the problem, and no row was added or changed
    assert caught.value.code == "invalid_import"
    assert message in caught.value.message
    assert _rows() == before


def test_it_refuses_max_tokens_over_the_models_limit_and_writes_nothing(alice):
    limit = default_model().max_new_tokens
    before = (Conversation.objects.count(), Message.objects.count())
    with pytest.raises(ChatError) as caught:
        do_import(alice, _raw(_file(settings={"max_tokens": limit + 1})))
    assert caught.value.code == "invalid_import"
    assert caught.value.message == f"Settings: max_tokens must be a whole number from 1 to {limit}."
    assert (Conversation.objects.count(), Message.objects.count()) == before
    # While the limit itself is accepted
    assert do_import(alice, _raw(_file(settings={"max_tokens": limit}))).max_tokens == limit


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_it_stores_and_exports_hostile_text_verbatim(alice, payload):
    # Given a file whose title, system prompt, question, reasoning and answer are a hostile payload
    messages = [{"id": "q", "role": "user", "content": payload},
                {"id": "a", "parent_id": "q", "role": "assistant", "content": payload, "reasoning": payload}]
    raw = _raw(_file(title=payload, settings={"system_prompt": payload}, messages=messages))
    # When it is imported
    conversation = do_import(alice, raw)
    # Then storage did not alter any of it (escaping is the renderer's job)
    conversation.refresh_from_db()
    assert conversation.title == " ".join(payload.split())  # titles are one line, as for a rename
    assert conversation.system_prompt == payload
    question, answer = conversation.messages.order_by("position")
    assert question.content == payload and answer.content == payload and answer.reasoning == payload
    # And both exports carry it as it was
    data = export_json(conversation)
    assert data["settings"]["system_prompt"] == payload and data["title"] == conversation.title
    assert [x["content"] for x in data["messages"]] == [payload, payload]
    assert data["messages"][1]["reasoning"] == payload
    text = export_markdown(conversation)
    assert f"\n\n{payload}\n\n" in text and f"# {conversation.title}\n" in text
