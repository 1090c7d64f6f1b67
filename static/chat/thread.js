// Branches of a conversation's message tree; the same rules as chat/threads.py on the server.

// nodes: Map id -> {id, parent_id, position}
export function pathTo(leafId, nodes) {
  const path = [];
  let node = leafId ? nodes.get(leafId) : null;
  while (node && path.length <= nodes.size) {
    path.push(node);
    node = node.parent_id ? nodes.get(node.parent_id) : null;
  }
  return path.reverse();
}

export function childrenOf(parentId, nodes) {
  const children = [];
  for (const node of nodes.values()) if ((node.parent_id || null) === (parentId || null)) children.push(node);
  return children.sort((a, b) => a.position - b.position);
}

export function newestLeafUnder(startId, nodes) {
  let current = startId;
  const seen = new Set();
  for (;;) {
    if (seen.has(current)) return current;
    seen.add(current);
    const children = childrenOf(current, nodes);
    if (!children.length) return current;
    current = children[children.length - 1].id;
  }
}

export function defaultLeaf(nodes) {
  let newest = null;
  for (const node of nodes.values()) if (!newest || node.position > newest.position) newest = node;
  return newest ? newestLeafUnder(newest.id, nodes) : null;
}
