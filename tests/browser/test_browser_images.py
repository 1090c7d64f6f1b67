"""In Chromium: attach images by button, drop and paste; ask the vision model; keep them private."""
from __future__ import annotations

import base64
import io
import re

from PIL import Image

from chat.conversations.models import Attachment
from tests.support.browser import BrowserTestCase


def png_file(tmp_dir, name: str, color) -> str:
    path = tmp_dir / name
    Image.new("RGB", (120, 80), color).save(path, "PNG")
    return str(path)


def png_base64(color) -> str:
    out = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


# Builds a File in the page and hands it over as a drop or a paste would.
GIVE_FILE = """([kind, b64, selector]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
  const target = document.querySelector(selector);
  const event = kind === 'paste'
    ? new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true})
    : new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true});
  target.dispatchEvent(event);
}"""


class ImagesInChromiumTests(BrowserTestCase):
    # Uploads go to the server process's MEDIA_ROOT (forked before any override could reach it) and
    # the worker here reads them from the same folder: the default one under DATA_DIR.
    def setUp(self):
        super().setUp()
        import tempfile
        from pathlib import Path

        self.scratch = tempfile.TemporaryDirectory()
        self.files = Path(self.scratch.name)

    def tearDown(self):
        self.scratch.cleanup()
        super().tearDown()

    def test_images_attached_by_button_drop_and_paste_go_with_the_question(self):
        page = self.page
        self.start_chat("vera", model="deepseek-vl")
        page.set_input_files("#attach-input", png_file(self.files, "red.png", "red"))
        page.evaluate(GIVE_FILE, ["drop", png_base64("blue"), "#main"])
        page.evaluate(GIVE_FILE, ["paste", png_base64("green"), "#prompt"])
        page.wait_for_function("document.querySelectorAll('#attachment-tray .attachment-chip').length === 3")
        # One can be taken back before sending.
        page.locator("#attachment-tray .remove-attachment").nth(1).click()
        assert page.locator("#attachment-tray .attachment-chip").count() == 2
        page.evaluate("""window.answerTexts = new Set();
          new MutationObserver(() => {
            const answer = document.querySelector('.message.assistant.streaming .content');
            if (answer) window.answerTexts.add(answer.textContent);
          }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true,
                                                          attributes: true});""")
        self.ask("What colours are these?")
        # Streamed: the answer was seen growing through several texts before it finished.
        assert page.evaluate("window.answerTexts.size") > 2
        assert page.locator(".message.user .message-images img").count() == 2
        assert page.locator("#attachment-tray .attachment-chip").count() == 0 and page.is_hidden("#attachment-tray")
        assert Attachment.objects.filter(message__isnull=False).count() == 2
        assert page.locator(".message.assistant.done").count() == 1
        # After a reload the thumbnails are still there, served to their owner.
        page.reload()
        images = page.locator(".message.user .message-images img")
        assert images.count() == 2
        assert page.evaluate("[...document.querySelectorAll('.message-images img')].every((i) => i.naturalWidth > 0)")
        full_url = page.locator(".message-images a").first.get_attribute("href")
        assert self.context.request.get(self.live_server_url + full_url).status == 200

        # Someone else gets a 404 for the same image URL.
        other = self.new_context()
        other_page = other.new_page()
        self.sign_up("walt", other_page)
        assert other.request.get(self.live_server_url + full_url).status == 404
        other.close()

    def test_a_text_only_model_says_it_cannot_see_images_and_keeps_them_for_another_try(self):
        page = self.page
        self.start_chat("xena", model="deepseek-chat")
        page.set_input_files("#attach-input", png_file(self.files, "red.png", "red"))
        page.wait_for_selector("#attachment-tray .attachment-chip")
        page.fill("#prompt", "What is this?")
        page.press("#prompt", "Enter")
        page.wait_for_selector("#error:not([hidden])")
        assert "cannot see images" in page.inner_text("#error")
        assert page.locator(".message").count() == 0
        assert page.locator("#attachment-tray .attachment-chip").count() == 1

    def test_a_file_that_is_not_an_image_is_refused_with_a_clear_error(self):
        page = self.page
        self.start_chat("yves", model="deepseek-vl")
        fake = self.files / "fake.png"
        fake.write_bytes(b"PK\x03\x04 this is a zip, not a png")
        page.set_input_files("#attach-input", str(fake))
        page.wait_for_selector("#error:not([hidden])")
        assert re.search(r"not a PNG, JPEG, WebP or GIF", page.inner_text("#error"))
        assert page.locator("#attachment-tray .attachment-chip").count() == 0
        assert not Attachment.objects.exists()
