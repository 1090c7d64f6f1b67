"""What of a conversation one page (or one "earlier messages" fetch) carries, so a view costs a bounded amount
however big the tree: every message as a stub (its place in the tree, so versions can be switched), and full,
rendered frames only for the newest messages of one branch, at most CONVERSATION_PAGE_MESSAGES of them and
CONVERSATION_PAGE_CHARS of text and HTML. The page fetches the rest of a branch when the reader asks for it.
"""
from __future__ import annotations

from typing import Any
from uuid import UUID

from django.conf import settings

from chat.conversations import threads
from chat.conversations.frames import message_frame
from chat.conversations.models import Conversation, Message

STUB_FIELDS = ("id", "parent_id", "position", "role", "status")


def tree(conversation: Conversation) -> list[Message]:
    """Every message of the conversation, without its text."""
    # Not conversation.messages: its rows each look up their deferred conversation_id (a query per message).
    return list(Message.objects.filter(conversation=conversation).only(*STUB_FIELDS))


def stub(message: Message) -> dict[str, Any]:
    """A message the page knows the place of but not the text (it has no seq: a delta for it asks a resume)."""
    return {"id": str(message.id), "parent_id": str(message.parent_id) if message.parent_id else None,
            "position": message.position, "role": message.role, "status": message.status, "stub": True}


def branch_window(conversation: Conversation, until: UUID | None, nodes: list[Message]) -> list[dict[str, Any]]:
    """The frames of the newest messages of the branch ending at `until`, oldest first: at least one, at most
    CONVERSATION_PAGE_MESSAGES, and no older one past CONVERSATION_PAGE_CHARS (checked before it is rendered)."""
    path = threads.path_to(until, nodes)[-settings.CONVERSATION_PAGE_MESSAGES:]
    rows = {m.id: m for m in conversation.messages.filter(id__in=[n.id for n in path])
            .prefetch_related("attachments")}
    frames: list[dict[str, Any]] = []
    used = 0
    for node in reversed(path):
        row = rows.get(node.id)
        if row is None:  # deleted meanwhile
            break
        text = len(row.content) + len(row.reasoning)
        if frames and used + text > settings.CONVERSATION_PAGE_CHARS:
            break
        body = message_frame(row)["message"]
        used += text + len(body.get("html", ""))
        if len(frames) and used > settings.CONVERSATION_PAGE_CHARS:
            break
        frames.append(body)
    return frames[::-1]


def page_state(conversation: Conversation) -> dict[str, Any]:
    """The page's initial messages: the branch on show's newest ones and every unfinished answer in full (a
    delta has to find its text), the rest as stubs; and which leaf is on show."""
    nodes = tree(conversation)
    leaf = conversation.current_leaf_id or threads.default_leaf(nodes)
    full = {body["id"]: body for body in branch_window(conversation, leaf, nodes)}
    active = [n.id for n in nodes if n.status in Message.ACTIVE and str(n.id) not in full]
    for row in conversation.messages.filter(id__in=active).prefetch_related("attachments"):
        full[str(row.id)] = message_frame(row)["message"]  # not rendered while it streams
    return {
        "messages": [full.get(str(n.id)) or stub(n) for n in nodes],
        "current_leaf": str(leaf) if leaf else None,
    }
