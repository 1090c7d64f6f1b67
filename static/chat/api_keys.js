// The API keys page: copy buttons for the new key, the base URL and the examples.
const stringsEl = document.getElementById("ui-strings");
const t = stringsEl ? JSON.parse(stringsEl.textContent) : {};
const status = document.getElementById("copy-status");

function selectAll(source) {
  if (source instanceof HTMLInputElement) {
    source.focus();
    source.select();
  } else {
    window.getSelection().selectAllChildren(source);
  }
}

async function copy(source) {
  const text = source instanceof HTMLInputElement ? source.value : source.textContent;
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // The clipboard API needs a secure context (plain http on a LAN address is not one):
    // the old way still works there, and the selection lets Ctrl+C do it otherwise.
    selectAll(source);
    try { return document.execCommand("copy"); } catch { return false; }
  }
}

for (const button of document.querySelectorAll("button[data-copy]")) {
  const source = document.getElementById(button.dataset.copy);
  if (!source) continue;
  const label = button.firstChild.textContent;
  button.hidden = false;  // without JavaScript there is nothing to click; the text can still be selected
  button.addEventListener("click", async () => {
    const copied = await copy(source);
    const said = copied ? t.copied : t.copy_failed;
    button.firstChild.textContent = copied ? t.copied : label;
    if (status) status.textContent = said;
    setTimeout(() => { button.firstChild.textContent = label; }, 2000);
  });
}
