"""Branches of a conversation's message tree: the path on show and where a version leads.

Edits and regenerations add siblings; a branch is the path from the first message to a leaf.
The same rules run in static/chat/thread.js, so the page and the server agree on what is shown.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol
from uuid import UUID


class Node(Protocol):
    id: UUID
    parent_id: UUID | None
    position: int


def path_to(leaf_id: UUID | None, nodes: Iterable[Node]) -> list[Node]:
    """The messages from the first one down to `leaf_id`, oldest first ([] for no leaf)."""
    by_id = {node.id: node for node in nodes}
    path: list[Node] = []
    node = by_id.get(leaf_id) if leaf_id else None
    while node is not None and len(path) <= len(by_id):  # the bound guards against a cycle
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    return path[::-1]


def newest_leaf_under(start_id: UUID, nodes: Iterable[Node]) -> UUID:
    """Following the newest child at each step from `start_id`, the leaf reached."""
    children: dict[UUID | None, list[Node]] = {}
    for node in nodes:
        children.setdefault(node.parent_id, []).append(node)
    current, seen = start_id, set()
    while current in children and current not in seen:
        seen.add(current)
        current = max(children[current], key=lambda n: n.position).id
    return current


def default_leaf(nodes: Iterable[Node]) -> UUID | None:
    """The leaf shown when none was picked: the newest message's branch."""
    nodes = list(nodes)
    if not nodes:
        return None
    return newest_leaf_under(max(nodes, key=lambda n: n.position).id, nodes)
