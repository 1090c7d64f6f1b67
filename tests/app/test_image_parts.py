"""API message content with images: data: URLs decoded, http(s) refused by default, all validated."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from chat.api.image_parts import decode_data_url, parse_content, store_images
from chat.conversations.models import Attachment
from chat.core.errors import ChatError

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def data_url(raw: bytes, mime="image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 16), "purple").save(out, "PNG")
    return out.getvalue()


def test_text_and_image_parts_give_the_text_and_the_image_bytes():
    parsed = parse_content([{"type": "text", "text": "What is"}, {"type": "image_url", "image_url": {
        "url": data_url(png(), mime="text/html"), "detail": "low"}}, {"type": "text", "text": "this?"}])
    assert parsed.text == "What is\nthis?" and parsed.images == [png()]
    assert parse_content("plain text") == parse_content([{"type": "text", "text": "plain text"}])


@pytest.mark.parametrize("content,code", [
    ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}], "remote_images_disabled"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png,rawnotbase64"}}], "invalid_image_url"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!notbase64"}}], "invalid_image_url"),
    ([{"type": "image_url", "image_url": {"url": 42}}], "invalid_content"),
    ([{"type": "audio", "audio": {}}], "invalid_content"),
    ([{"type": "text", "text": 5}], "invalid_content"),
    ({"type": "text"}, "invalid_content"),
])
def test_bad_parts_get_a_clear_error(content, code):
    with pytest.raises(ChatError) as refused:
        parse_content(content)
    assert refused.value.code == code and refused.value.message


def test_too_many_images_and_too_large_data_are_refused_before_decoding(settings):
    settings.ATTACHMENTS_PER_MESSAGE = 1
    image = {"type": "image_url", "image_url": {"url": data_url(png())}}
    with pytest.raises(ChatError) as refused:
        parse_content([image, image])
    assert refused.value.code == "too_many_attachments"
    settings.ATTACHMENT_MAX_BYTES = 1024
    with pytest.raises(ChatError) as refused:
        decode_data_url("data:image/png;base64," + "A" * 4000)
    assert refused.value.code == "too_large"


def test_images_are_validated_and_stored_as_the_users_and_a_bad_one_stores_none(
    alice, media, django_capture_on_commit_callbacks
):
    stored = store_images(alice, [png()])
    assert [a.mime for a in stored] == ["image/png"] and stored[0].owner == alice
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    with pytest.raises(ChatError) as refused, django_capture_on_commit_callbacks(execute=True):
        store_images(alice, [png(), svg])
    assert refused.value.code == "not_an_image"
    assert Attachment.objects.count() == 1  # only the first call's image
    assert len([p for p in media.rglob("*") if p.is_file()]) == 2
