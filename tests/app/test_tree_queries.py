"""Reading a conversation's tree costs one query however many messages it holds (a 5,000-message import's page
view, and every send's look-up of the branch it follows, used to cost one query per message)."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.conversations import actions, windows
from chat.conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def long_chat(alice) -> Conversation:
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat")
    parent = None
    for position in range(1, 41):
        parent = Message.objects.create(conversation=conversation, position=position, parent=parent, content="x",
                                        role="user" if position % 2 else "assistant")
    return conversation


@pytest.mark.parametrize("read", [actions.tree_nodes, windows.tree], ids=["tree_nodes", "page tree"])
def test_the_tree_is_one_query(long_chat, read):
    with CaptureQueriesContext(connection) as queries:
        nodes = read(long_chat)
    assert len(nodes) == 40 and len(queries.captured_queries) == 1


def test_the_branch_leaf_costs_two_queries_however_long_the_chat(long_chat):
    with CaptureQueriesContext(connection) as queries:
        leaf = actions._branch_leaf(long_chat)
    assert leaf.position == 40 and len(queries.captured_queries) == 2
