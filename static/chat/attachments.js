// Images for the next message: pick (button), drop or paste them; each is uploaded at once and
// shown as a thumbnail in the tray until the message is sent (the server validates it first).
const ACCEPTED = ["image/png", "image/jpeg", "image/webp", "image/gif"];

function csrfToken() {
  return document.querySelector("input[name=csrfmiddlewaretoken]")?.value || "";
}

export function setupAttachments({ t, onError, dropZone }) {
  const tray = document.getElementById("attachment-tray");
  const input = document.getElementById("attach-input");
  const attachButton = document.getElementById("attach");
  const pending = []; // {id, el}
  let uploading = 0;

  function render() {
    tray.hidden = pending.length === 0 && uploading === 0;
    tray.setAttribute("aria-busy", String(uploading > 0));
  }

  async function upload(file) {
    uploading += 1;
    render();
    const body = new FormData();
    body.append("file", file);
    try {
      const response = await fetch("/attachments/", { method: "POST", body, headers: { "X-CSRFToken": csrfToken() } });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) {
        onError(answer.error?.message || t.upload_failed);
        return;
      }
      const chip = document.createElement("span");
      chip.className = "attachment-chip";
      const img = document.createElement("img");
      img.src = answer.thumbnail_url;
      img.alt = t.attached_image;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "icon remove-attachment";
      remove.textContent = "✕";
      remove.setAttribute("aria-label", t.remove_image);
      const entry = { id: answer.id, el: chip };
      remove.addEventListener("click", () => {
        pending.splice(pending.indexOf(entry), 1);
        chip.remove();
        render();
      });
      chip.append(img, remove);
      tray.append(chip);
      pending.push(entry);
    } catch {
      onError(t.upload_failed);
    } finally {
      uploading -= 1;
      render();
    }
  }

  function take(files) {
    for (const file of files) {
      if (!ACCEPTED.includes(file.type)) {
        onError(t.not_an_image);
        continue;
      }
      upload(file);
    }
  }

  attachButton.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    take([...input.files]);
    input.value = "";
  });
  dropZone.addEventListener("dragover", (event) => {
    if ([...event.dataTransfer.types].includes("Files")) {
      event.preventDefault();
      dropZone.classList.add("dropping");
    }
  });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dropping"));
  dropZone.addEventListener("drop", (event) => {
    dropZone.classList.remove("dropping");
    if (!event.dataTransfer.files.length) return;
    event.preventDefault();
    take([...event.dataTransfer.files]);
  });
  document.getElementById("prompt").addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (files.length) {
      event.preventDefault();
      take(files);
    }
  });

  return {
    ids: () => pending.map((p) => p.id),
    busy: () => uploading > 0,
    clear() {
      pending.splice(0).forEach((p) => p.el.remove());
      render();
    },
  };
}
