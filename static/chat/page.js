// What every page does: theme toggle, language auto-apply, the sidebar (rename, delete, phone menu).
const stringsEl = document.getElementById("ui-strings");
const t = stringsEl ? JSON.parse(stringsEl.textContent) : {};
const root = document.documentElement;

// ---- theme: system → dark → light, kept in a cookie so the server paints it first ----------
const THEMES = ["system", "dark", "light"];
const themeButton = document.getElementById("theme-toggle");
function showTheme() {
  if (themeButton) themeButton.textContent = t[`theme_${root.dataset.theme || "system"}`] || root.dataset.theme;
}
themeButton?.addEventListener("click", () => {
  const next = THEMES[(THEMES.indexOf(root.dataset.theme || "system") + 1) % THEMES.length];
  root.dataset.theme = next;
  document.cookie = `theme=${next}; path=/; max-age=31536000; SameSite=Lax`;
  showTheme();
});
showTheme();

// ---- a language picked from the list applies at once (the button is the no-JS path) --------
for (const select of document.querySelectorAll("select.auto-submit")) {
  select.addEventListener("change", () => select.form.requestSubmit());
}

// ---- phone: the conversation list opens over the page ----------------------------------------
const openSidebar = document.getElementById("open-sidebar");
function setSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  openSidebar?.setAttribute("aria-expanded", String(open));
  if (open) document.getElementById("new-chat")?.focus();
}
openSidebar?.addEventListener("click", () => setSidebar(true));
document.getElementById("close-sidebar")?.addEventListener("click", () => { setSidebar(false); openSidebar?.focus(); });

// ---- delete, after a confirmation dialog -----------------------------------------------------
const dialog = document.getElementById("delete-dialog");
for (const b of document.querySelectorAll(".delete-button")) {
  b.addEventListener("click", () => {
    document.getElementById("delete-form").action = b.dataset.url;
    document.getElementById("delete-dialog-name").textContent = b.dataset.title;
    dialog.showModal();
    document.getElementById("delete-cancel").focus();
  });
}
document.getElementById("delete-cancel")?.addEventListener("click", () => dialog.close());

// ---- rename inline: Enter or leaving the field saves, Escape cancels --------------------------
function csrfToken() {
  return document.querySelector("input[name=csrfmiddlewaretoken]")?.value || "";
}

function startRename(item, b) {
  const link = item.querySelector(".conversation-link");
  if (item.querySelector(".rename-input")) return;
  const input = document.createElement("input");
  input.className = "rename-input";
  input.value = link.textContent;
  input.maxLength = 200;
  input.setAttribute("aria-label", t.title_label || "Title");
  link.hidden = true;
  item.prepend(input);
  input.focus();
  input.select();
  let finished = false;
  const finish = async (save) => {
    if (finished) return;
    finished = true;
    const title = input.value.trim();
    if (save && title && title !== link.textContent) {
      const body = new FormData();
      body.append("title", title);
      const response = await fetch(b.dataset.url, {
        method: "POST", body, headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
      });
      const answer = await response.json().catch(() => ({}));
      if (response.ok) {
        link.textContent = answer.title;
        if (item.classList.contains("current")) {
          const header = document.getElementById("conversation-title");
          if (header) header.textContent = answer.title;
          document.title = `${answer.title} · deepseek-web`;
        }
      } else {
        const error = document.getElementById("error") || document.getElementById("sidebar-error");
        if (error) {
          error.textContent = answer.error?.message || t.rename_failed;
          error.hidden = false;
        }
      }
    }
    input.remove();
    link.hidden = false;
    b.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.isComposing && event.keyCode !== 229) { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
}

for (const b of document.querySelectorAll(".rename-button")) {
  b.addEventListener("click", () => startRename(b.closest(".conversation-item"), b));
}
