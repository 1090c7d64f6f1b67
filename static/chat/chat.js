// The conversation page: one WebSocket (frames from DESIGN.md), the branch on show, versions.
// Finished answers arrive as server-rendered, sanitized HTML; text still streaming is shown as
// plain text in its own element, so a token never makes the page re-render anything else.
import { setupAttachments } from "./attachments.js";
import { childrenOf, defaultLeaf, newestLeafUnder, pathTo } from "./thread.js";

const script = document.getElementById("chat-script");
const conversationId = script.dataset.conversationId;
const state = JSON.parse(document.getElementById("initial-state").textContent);
const t = { ...JSON.parse(document.getElementById("ui-strings").textContent), ...state.strings };
const list = document.getElementById("messages");
const form = document.getElementById("composer");
const prompt = document.getElementById("prompt");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const errorBox = document.getElementById("error");
const connectionBox = document.getElementById("connection");

const ACTIVE = new Set(["pending", "streaming"]);
// id -> {id, parent_id, position, role, status, seq, content, reasoning, html, error, el, ...}
const nodes = new Map();
let leafId = state.current_leaf;
let activeId = null; // the answer being written, if any (in any branch)
let socket = null;
let retries = 0;
let sentImages = false; // images went with the last send: clear the tray once it is accepted
// The last message sent and not yet taken (its question not echoed back): a refusal puts its text back.
let unconfirmed = null;
const images = setupAttachments({ t, onError: showError, dropZone: document.getElementById("main") });

// ---- elements -------------------------------------------------------------------------------
function button(label, className, onClick, ariaLabel) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  if (ariaLabel) b.setAttribute("aria-label", ariaLabel);
  b.addEventListener("click", onClick);
  return b;
}

function build(node) {
  const el = document.createElement("article");
  el.dataset.messageId = node.id;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = node.role === "user" ? t.you : t.assistant;
  const content = document.createElement("div");
  content.className = "content";
  const tools = document.createElement("div");
  tools.className = "message-tools";
  el.append(role, content, tools);
  node.el = el;
  node.contentEl = content;
  node.toolsEl = tools;
  return el;
}

function thinkingFor(node) {
  if (node.thinkingEl) return node.thinkingEl;
  const details = document.createElement("details");
  details.className = "thinking";
  details.open = true;
  const summary = document.createElement("summary");
  summary.textContent = t.thinking;
  const text = document.createElement("div");
  text.className = "reasoning-text";
  text.append(document.createTextNode(""));
  details.append(summary, text);
  node.el.insertBefore(details, node.contentEl);
  node.thinkingEl = details;
  return details;
}

function showReasoning(node) {
  if (!node.reasoning) return;
  const details = thinkingFor(node);
  details.querySelector(".reasoning-text").firstChild.data = node.reasoning;
  // Thinking streams open; once the answer itself starts it folds away (the user can reopen it).
  const answering = !!node.content || !ACTIVE.has(node.status);
  if (answering && !node.foldedOnce) {
    details.open = false;
    node.foldedOnce = true;
  }
  details.querySelector("summary").textContent = ACTIVE.has(node.status) && !node.content ? t.thinking : t.thought;
}

function addCopyButtons(container) {
  for (const block of container.querySelectorAll(".code-block")) {
    if (block.querySelector(".copy-code")) continue;
    const code = block.querySelector("pre");
    block.prepend(button(t.copy_code, "copy-code secondary", (e) => copyText(code.innerText, e.currentTarget)));
  }
}

function showImages(node) {
  if (!node.attachments?.length || node.imagesEl) return;
  const row = document.createElement("div");
  row.className = "message-images";
  for (const image of node.attachments) {
    const link = document.createElement("a");
    link.href = image.url;
    link.target = "_blank";
    link.rel = "noopener";
    const img = document.createElement("img");
    img.src = image.thumbnail_url;
    img.alt = t.attached_image;
    img.width = Math.min(192, image.width);
    img.height = Math.round(img.width * image.height / image.width);
    link.append(img);
    row.append(link);
  }
  node.contentEl.before(row);
  node.imagesEl = row;
}

function showContent(node) {
  const el = node.contentEl;
  showImages(node);
  if (node.role === "assistant" && node.html !== undefined && !ACTIVE.has(node.status)) {
    el.className = "content rendered";
    el.innerHTML = node.html; // rendered and sanitized by the server (chat/rendering.py)
    addCopyButtons(el);
    node.textNode = null;
  } else {
    el.className = "content plain";
    el.textContent = "";
    node.textNode = document.createTextNode(node.content || "");
    el.append(node.textNode);
  }
  showReasoning(node);
}

function showStatus(node) {
  node.el.className = `message ${node.role} ${node.status}`;
  node.el.querySelector(".notice")?.remove();
  const notice = { failed: node.error || t.failed, cancelled: t.stopped }[node.status]
    || (node.finish_reason === "content_filter" ? t.filtered : "");
  if (notice) {
    const n = document.createElement("div");
    n.className = "notice";
    n.textContent = notice;
    node.contentEl.after(n);
  }
  showTools(node);
}

function showTools(node) {
  const tools = node.toolsEl;
  tools.textContent = "";
  const siblings = childrenOf(node.parent_id, nodes).filter((s) => s.role === node.role);
  if (siblings.length > 1) {
    const index = siblings.findIndex((s) => s.id === node.id);
    const versions = document.createElement("span");
    versions.className = "versions";
    const label = document.createElement("span");
    label.className = "version-label";
    label.textContent = `${index + 1}/${siblings.length}`;
    label.setAttribute("aria-label", `${t.version} ${index + 1}/${siblings.length}`);
    const prev = button("‹", "icon version-prev", () => selectVersion(siblings[index - 1]), t.previous_version);
    const next = button("›", "icon version-next", () => selectVersion(siblings[index + 1]), t.next_version);
    prev.disabled = index === 0;
    next.disabled = index === siblings.length - 1;
    versions.append(prev, label, next);
    tools.append(versions);
  }
  if (ACTIVE.has(node.status)) return;
  tools.append(button(t.copy, "secondary copy-message", (e) => copyText(node.content, e.currentTarget)));
  if (node.role === "assistant") tools.append(button(t.regenerate, "secondary regenerate", () => regenerate(node)));
  if (node.role === "user") tools.append(button(t.edit, "secondary edit", () => startEdit(node)));
}

// ---- the branch on show ---------------------------------------------------------------------
// The page comes with the text of the branch's newest messages only; the others are stubs (their place in
// the tree) until fetched: the branch shows from its newest stub on, with a button to fetch further back.
function renderThread(keepScroll = false) {
  const path = pathTo(leafId, nodes);
  let start = path.length;
  while (start > 0 && !path[start - 1].stub) start--;
  const fragment = document.createDocumentFragment();
  if (start > 0) {
    const until = path[start - 1].id;
    // The message on show itself is not here yet (another version was picked): fetch it, once.
    if (start === path.length && !failed.has(until)) fetchBranch(until, false);
    const loading = fetching.has(until);
    const more = button(loading ? t.loading : t.load_earlier, "secondary load-earlier", () => {
      more.disabled = true;
      more.textContent = t.loading;
      fetchBranch(until, true);
    });
    more.disabled = loading;
    fragment.append(more);
  }
  for (const node of path.slice(start)) {
    if (!node.el) {
      build(node);
      showContent(node);
    }
    showStatus(node);
    fragment.append(node.el);
  }
  const fromBottom = list.scrollHeight - list.scrollTop;
  list.replaceChildren(fragment);
  if (keepScroll) list.scrollTop = list.scrollHeight - fromBottom;
  else scrollToEnd(true);
}

// Messages of the branch ending at `until` (the server sends the newest few): stubs become messages.
const fetching = new Set();
const failed = new Set();
async function fetchBranch(until, keepScroll) {
  if (fetching.has(until)) return;
  fetching.add(until);
  try {
    const response = await fetch(`/c/${conversationId}/messages/?until=${encodeURIComponent(until)}`,
      { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(String(response.status));
    for (const body of (await response.json()).messages) {
      const node = nodes.get(body.id);
      if (node && !node.stub) continue; // what the socket brought is as fresh
      nodes.set(body.id, { ...body, parent_id: body.parent_id || null, stub: false });
    }
  } catch {
    failed.add(until);
    showError(t.load_failed);
  } finally {
    fetching.delete(until);
  }
  renderThread(keepScroll);
}

function selectVersion(sibling) {
  if (!sibling) return;
  leafId = newestLeafUnder(sibling.id, nodes);
  renderThread();
  send({ type: "select", message_id: sibling.id });
}

function nearBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function scrollToEnd(force) {
  if (force || nearBottom()) list.scrollTop = list.scrollHeight;
}

// ---- frames ---------------------------------------------------------------------------------
function setActive() {
  activeId = null;
  for (const node of nodes.values()) if (node.role === "assistant" && ACTIVE.has(node.status)) activeId = node.id;
  sendButton.hidden = !!activeId;
  stopButton.hidden = !activeId;
  // One attribute on the list hides Regenerate and Edit everywhere (no per-message DOM writes).
  list.toggleAttribute("data-busy", !!activeId);
}

function showTitle(title) {
  const header = document.getElementById("conversation-title");
  const link = document.querySelector(`.conversation-link[data-conversation-id="${conversationId}"]`);
  if (header) header.textContent = title;
  if (link) link.textContent = title;
  document.title = `${title} · deepseek-web`;
}

function upsert(body) {
  resuming.delete(body.id);
  if (body.conversation_title) showTitle(body.conversation_title);
  if (unconfirmed && body.role === "user" && body.client_id === unconfirmed.clientId) unconfirmed = null;
  if (sentImages && body.role === "user" && body.client_id) {
    images.clear(); // the server took them with the message (on an error they stay for another try)
    sentImages = false;
  }
  let node = nodes.get(body.id);
  const isNew = !node;
  if (isNew) {
    node = { seq: 0 };
    nodes.set(body.id, node);
  }
  const wasOnPath = !isNew && node.el?.isConnected;
  // The row is the source of truth: take its text unless we already streamed past it.
  const fresher = body.seq >= node.seq;
  Object.assign(node, {
    id: body.id, parent_id: body.parent_id || null, position: body.position, role: body.role,
    status: body.status, finish_reason: body.finish_reason, error: body.error,
  });
  if (fresher) {
    Object.assign(node, { seq: body.seq, content: body.content, reasoning: body.reasoning, html: body.html, stub: false });
  }
  if (body.attachments) node.attachments = body.attachments;
  if (isNew) {
    const appendsToBranch = (node.parent_id || null) === (leafId || null) || !leafId;
    leafId = node.id; // a new message (ours or from another tab) is what the user wants to see
    if (appendsToBranch) {
      // Refresh the parent's and siblings' tools only when it is a new version somewhere.
      build(node);
      showContent(node);
      showStatus(node);
      list.append(node.el);
    } else {
      renderThread();
    }
  } else if (node.el) {
    if (fresher) showContent(node);
    showStatus(node);
  }
  if (isNew || wasOnPath) scrollToEnd(isNew);
  setActive();
}

const resuming = new Set(); // answers whose row was asked for and has not come yet
function onDelta(frame) {
  let node = nodes.get(frame.message_id);
  if (!node) return; // not announced to us: a later resume or reload shows it
  if (frame.seq <= node.seq) return; // already have it (from the row or a repeat)
  if (frame.seq !== node.seq + 1) {
    // A gap: frames are at-most-once, so re-read the row and continue from there. One resume at a time
    // (the server answers few of them per socket): the deltas that follow the gap need no more.
    if (!resuming.has(frame.message_id)) {
      resuming.add(frame.message_id);
      send({ type: "resume", message_id: frame.message_id, after_seq: node.seq });
    }
    return;
  }
  node.seq = frame.seq;
  if (frame.reasoning) {
    node.reasoning = (node.reasoning || "") + frame.reasoning;
    if (node.el) showReasoning(node);
  }
  if (frame.content) {
    const first = !node.content;
    node.content = (node.content || "") + frame.content;
    if (node.textNode) node.textNode.appendData(frame.content);
    if (first && node.el) showReasoning(node);
  }
  if (node.status === "pending") {
    node.status = "streaming";
    if (node.el) showStatus(node);
  }
  scrollToEnd(false);
}

function onFrame(frame) {
  switch (frame.type) {
    case "message":
      upsert(frame.message);
      break;
    case "delta":
      onDelta(frame);
      break;
    case "done": {
      const node = nodes.get(frame.message_id);
      if (!node) return;
      const status = { cancelled: "cancelled", error: "failed" }[frame.finish_reason] || "done";
      if (ACTIVE.has(node.status)) {
        node.status = status;
        node.finish_reason = frame.finish_reason;
        if (node.el) {
          showContent(node);
          showStatus(node);
        }
      }
      setActive();
      break;
    }
    case "error": {
      resuming.clear(); // a refused resume may be asked again at the next gap
      const node = frame.message_id && nodes.get(frame.message_id);
      if (node && frame.code === "generation_failed") node.error = frame.message;
      if (unconfirmed && !frame.message_id) {
        // The send was refused (too long, too fast, filtered…): nothing was saved, so nothing typed is lost.
        if (!prompt.value) prompt.value = unconfirmed.content;
        unconfirmed = null;
      }
      showError(frame.message);
      break;
    }
  }
}

// ---- commands -------------------------------------------------------------------------------
function showError(text) {
  errorBox.textContent = text;
  errorBox.hidden = !text;
}

function send(frame) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(frame));
    return true;
  }
  showError(t.not_connected);
  return false;
}

function submit() {
  const content = prompt.value;
  if (!content.trim() || activeId) return;
  if (images.busy()) {
    showError(t.still_uploading);
    return;
  }
  const clientId = crypto.randomUUID();
  if (!send({ type: "send", content, attachments: images.ids(), client_id: clientId })) return;
  showError("");
  unconfirmed = { clientId, content };
  prompt.value = "";
  sentImages = true;
}

function regenerate(node) {
  if (activeId) return;
  if (send({ type: "regenerate", message_id: node.id })) showError("");
}

function startEdit(node) {
  if (activeId || node.el.querySelector(".edit-box")) return;
  const box = document.createElement("form");
  box.className = "edit-box";
  const area = document.createElement("textarea");
  area.value = node.content;
  area.rows = Math.min(12, Math.max(2, node.content.split("\n").length));
  area.setAttribute("aria-label", t.edit_label);
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "save-edit";
  save.textContent = t.save_and_send;
  const cancel = button(t.cancel, "secondary cancel-edit", () => box.remove());
  box.append(area, save, cancel);
  box.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = area.value;
    if (!content.trim() || activeId) return;
    if (send({ type: "send", content, attachments: [], client_id: crypto.randomUUID(), edit_of: node.id })) {
      box.remove();
      showError("");
    }
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") box.remove();
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      box.requestSubmit();
    }
  });
  node.contentEl.after(box);
  area.focus();
}

async function copyText(text, target) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Not a secure context (plain http on a LAN name): fall back to a selection copy.
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const before = target.textContent;
  target.textContent = t.copied;
  setTimeout(() => { target.textContent = before; }, 1500);
}

// ---- the socket -----------------------------------------------------------------------------
function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/chat/${conversationId}/`);
  socket.addEventListener("open", () => {
    retries = 0;
    resuming.clear(); // answers to the old socket's resumes are lost with it
    connectionBox.hidden = true;
    if (errorBox.textContent === t.not_connected) showError("");
    document.body.dataset.socket = "open";
    // After a reload or reconnect, catch up on an answer that was being written.
    if (activeId) send({ type: "resume", message_id: activeId, after_seq: nodes.get(activeId).seq });
  });
  socket.addEventListener("message", (event) => onFrame(JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    document.body.dataset.socket = "closed";
    // Signed out (here or elsewhere: a logout, a new password): sign in again and come back.
    if (event.code === 4401) { location.href = `/accounts/login/?next=${encodeURIComponent(location.pathname)}`; return; }
    if (event.code === 4403) { showError(t.unavailable); return; }
    // Too many tabs open: say so, and try once a minute (not the quick backoff below: every tab over the
    // cap would reconnect every few seconds, each try refused).
    if (event.code === 4429) {
      connectionBox.textContent = t.too_many_sockets;
      connectionBox.hidden = false;
      setTimeout(connect, 60000);
      return;
    }
    const delay = Math.min(10000, 500 * 2 ** retries++);
    connectionBox.textContent = t.offline.replace("%(seconds)s", String(Math.max(1, Math.round(delay / 1000))));
    connectionBox.hidden = false;
    setTimeout(connect, delay);
  });
}

form.addEventListener("submit", (event) => { event.preventDefault(); submit(); });
prompt.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter is a new line; never send while an IME composition is open.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    submit();
  }
});
stopButton.addEventListener("click", () => activeId && send({ type: "stop", message_id: activeId }));

for (const body of state.messages) {
  nodes.set(body.id, {
    ...body, parent_id: body.parent_id || null, seq: body.seq || 0,
  });
}
if (!leafId || !nodes.has(leafId)) leafId = defaultLeaf(nodes);
renderThread();
setActive();
connect();
