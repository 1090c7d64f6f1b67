// The conversation page: one WebSocket, frames from DESIGN.md, text rendered as plain text.
const script = document.getElementById("chat-script");
const conversationId = script.dataset.conversationId;
const list = document.getElementById("messages");
const form = document.getElementById("composer");
const prompt = document.getElementById("prompt");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const errorBox = document.getElementById("error");
const connectionBox = document.getElementById("connection");

// message id -> {el, role, status, seq}
const messages = new Map();
let socket = null;
let retries = 0;
let activeId = null; // the assistant message being written, if any

function elementFor(body) {
  let el = list.querySelector(`[data-message-id="${body.id}"]`);
  if (!el && body.client_id) el = list.querySelector(`[data-client-id="${CSS.escape(body.client_id)}"]`);
  if (!el) {
    el = document.createElement("article");
    const role = document.createElement("div");
    role.className = "role";
    role.textContent = body.role === "user" ? "You" : "Assistant";
    const content = document.createElement("div");
    content.className = "content";
    el.append(role, content);
    list.append(el);
  }
  el.dataset.messageId = body.id;
  return el;
}

function setStatus(entry, status, notice) {
  entry.status = status;
  entry.el.className = `message ${entry.role} ${status}`;
  entry.el.querySelector(".notice")?.remove();
  if (notice) {
    const n = document.createElement("div");
    n.className = "notice";
    n.textContent = notice;
    entry.el.append(n);
  }
  if (entry.role === "assistant") {
    const running = status === "pending" || status === "streaming";
    if (running) activeId = entry.el.dataset.messageId;
    else if (activeId === entry.el.dataset.messageId) activeId = null;
    sendButton.hidden = !!activeId;
    stopButton.hidden = !activeId;
  }
}

function showTitle(title) {
  const header = document.querySelector(".conversation-header h1");
  const link = document.querySelector(`#conversation-list a[data-conversation-id="${conversationId}"]`);
  if (header) header.textContent = title;
  if (link) link.textContent = title;
  document.title = `${title} · deepseek-web`;
}

function upsert(body) {
  if (body.conversation_title) showTitle(body.conversation_title);
  const el = elementFor(body);
  const entry = messages.get(body.id) || { el, role: body.role, seq: 0 };
  entry.el = el;
  messages.set(body.id, entry);
  // The row is the source of truth: take its text unless we already streamed past it.
  if (body.seq >= entry.seq) {
    entry.seq = body.seq;
    el.querySelector(".content").textContent = body.content;
  }
  setStatus(entry, body.status, body.status === "failed" ? "This answer failed." : body.status === "cancelled" ? "Stopped." : "");
  el.scrollIntoView({ block: "end" });
}

function showError(text) {
  errorBox.textContent = text;
  errorBox.hidden = !text;
}

function onFrame(frame) {
  switch (frame.type) {
    case "message":
      upsert(frame.message);
      break;
    case "delta": {
      let entry = messages.get(frame.message_id);
      if (!entry) {
        upsert({ id: frame.message_id, role: "assistant", content: "", status: "streaming", seq: 0 });
        entry = messages.get(frame.message_id);
      }
      if (frame.seq <= entry.seq) return; // already have it (from the row or a repeat)
      if (frame.seq !== entry.seq + 1) {
        // A gap: frames are at-most-once, so re-read the row and continue from there.
        send({ type: "resume", message_id: frame.message_id, after_seq: entry.seq });
        return;
      }
      entry.seq = frame.seq;
      entry.el.querySelector(".content").textContent += frame.content;
      if (entry.status === "pending") setStatus(entry, "streaming");
      entry.el.scrollIntoView({ block: "end" });
      break;
    }
    case "done": {
      const entry = messages.get(frame.message_id);
      if (!entry) return;
      const status = { stop: "done", length: "done", cancelled: "cancelled", error: "failed", content_filter: "done" }[frame.finish_reason] || "done";
      setStatus(entry, status, status === "failed" ? (entry.errorText || "This answer failed.") : status === "cancelled" ? "Stopped." : "");
      break;
    }
    case "error": {
      const entry = frame.message_id && messages.get(frame.message_id);
      if (entry) entry.errorText = frame.message;
      showError(frame.message);
      break;
    }
  }
}

function send(frame) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(frame));
    return true;
  }
  showError("Not connected; reconnecting…");
  return false;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/chat/${conversationId}/`);
  socket.addEventListener("open", () => {
    retries = 0;
    connectionBox.hidden = true;
    document.body.dataset.socket = "open";
    // After a reconnect, catch up on an answer that was being written.
    if (activeId) send({ type: "resume", message_id: activeId, after_seq: messages.get(activeId).seq });
  });
  socket.addEventListener("message", (event) => onFrame(JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    document.body.dataset.socket = "closed";
    if (event.code === 4401) { location.href = "/accounts/login/"; return; }
    if (event.code === 4403) { showError("This conversation is not available."); return; }
    const delay = Math.min(10000, 500 * 2 ** retries++);
    connectionBox.textContent = `Offline — reconnecting in ${Math.round(delay / 1000)} s…`;
    connectionBox.hidden = false;
    setTimeout(connect, delay);
  });
}

function submit() {
  const content = prompt.value;
  if (!content.trim() || activeId) return;
  const clientId = crypto.randomUUID();
  if (!send({ type: "send", content, attachments: [], client_id: clientId })) return;
  showError("");
  prompt.value = "";
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

for (const body of JSON.parse(document.getElementById("initial-messages").textContent)) upsert(body);
connect();
