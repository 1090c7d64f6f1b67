"""Attaching images: upload, owner-only serving, quotas, sending with a message, deletion."""
from __future__ import annotations

import io
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from chat.conversations import actions
from chat.conversations.models import Attachment, Conversation, Message
from chat.core.errors import ChatError

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def vision_models(settings, demo_model_path):
    settings.DEEPSEEK_MODELS = [
        {"name": "deepseek-chat", "path": str(demo_model_path), "demo": True},
        {"name": "deepseek-vl", "path": str(demo_model_path), "vision": True},
    ]


def png(width=64, height=48, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def stored_files(media) -> list:
    return sorted(p for p in media.rglob("*") if p.is_file()) if media.exists() else []


def upload(client, raw: bytes, name="photo.png", content_type="image/png"):
    return client.post("/attachments/", {"file": SimpleUploadedFile(name, raw, content_type)})


def test_an_uploaded_image_is_stored_and_served_to_its_owner_only(client, alice, bob, media):
    client.force_login(alice)
    response = upload(client, png(), name="../../etc/passwd.svg", content_type="text/html")
    assert response.status_code == 201
    body = response.json()
    attachment = Attachment.objects.get(id=body["id"])
    # The type comes from the decoded image, the name from nothing the client said.
    assert (attachment.mime, attachment.width, attachment.height) == ("image/png", 64, 48)
    assert "passwd" not in attachment.file.name and attachment.file.name.startswith("attachments/")
    assert len(stored_files(media)) == 2  # the image and its thumbnail
    served = client.get(body["url"])
    assert served.status_code == 200 and served["Content-Type"] == "image/png"
    assert served["X-Content-Type-Options"] == "nosniff"
    assert served["Content-Disposition"] == 'inline; filename="image.png"'
    assert "sandbox" in served["Content-Security-Policy"]
    assert Image.open(io.BytesIO(b"".join(served.streaming_content))).size == (64, 48)
    assert client.get(body["thumbnail_url"])["Content-Type"] == "image/webp"
    client.force_login(bob)
    assert client.get(body["url"]).status_code == 404
    assert client.get(body["thumbnail_url"]).status_code == 404


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("a.txt", "hello")
    return out.getvalue()


@pytest.mark.parametrize("raw,code", [
    (b"", "empty_file"),
    (zip_bytes(), "not_an_image"),
    (png()[:60], "corrupt_image"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "not_an_image"),
    (b"<html><script>alert(1)</script></html>" + png(), "not_an_image"),
])
def test_a_bad_file_gets_a_clear_error_and_nothing_is_stored(client, alice, media, raw, code):
    client.force_login(alice)
    response = upload(client, raw)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]
    assert Attachment.objects.count() == 0 and stored_files(media) == []


def test_the_byte_cap_is_checked_before_reading(client, alice, media, settings):
    settings.ATTACHMENT_MAX_BYTES = 2048
    client.force_login(alice)
    response = upload(client, png(400, 400, (1, 2, 3)) + b"\0" * 4096)
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_large"
    assert Attachment.objects.count() == 0 and stored_files(media) == []
    assert upload(client, b"").json()["error"]["code"] == "empty_file"
    assert client.post("/attachments/").json()["error"]["code"] == "no_file"


def test_per_user_quotas_refuse_more_images_and_store_nothing(client, alice, bob, media, settings):
    settings.ATTACHMENTS_PER_USER = 2
    client.force_login(alice)
    assert upload(client, png()).status_code == 201 and upload(client, png()).status_code == 201
    response = upload(client, png())
    assert response.status_code == 400 and response.json()["error"]["code"] == "quota_exceeded"
    assert Attachment.objects.filter(owner=alice).count() == 2 and len(stored_files(media)) == 4
    client.force_login(bob)  # quotas are per user
    assert upload(client, png()).status_code == 201
    settings.ATTACHMENT_BYTES_PER_USER = 100  # bytes: less than one more image
    assert upload(client, png()).json()["error"]["code"] == "quota_exceeded"


def make_attachment(user, media_client=None) -> Attachment:
    from chat.conversations.uploads import do_upload

    return do_upload(user, png())


def test_a_message_takes_its_images_and_the_frame_lists_them(alice, vision_models, broker):
    conversation = Conversation.objects.create(user=alice, model="deepseek-vl")
    first, second = make_attachment(alice), make_attachment(alice)
    sent = actions.do_send_message(alice, conversation.id, "What is this?", attachments=[str(first.id), str(second.id)])
    assert sorted(a.id for a in sent.user_message.attachments.all()) == sorted([first.id, second.id])
    from chat.conversations.frames import message_frame

    listed = message_frame(sent.user_message)["message"]["attachments"]
    assert {a["id"] for a in listed} == {str(first.id), str(second.id)}
    assert all(a["url"].startswith("/attachments/") for a in listed)
    # An image goes with one message only.
    other = Conversation.objects.create(user=alice, model="deepseek-vl")
    with pytest.raises(ChatError) as refused:
        actions.do_send_message(alice, other.id, "again", attachments=[str(first.id)])
    assert refused.value.code == "not_found" and not other.messages.exists()


def test_images_for_a_text_only_model_are_refused_and_nothing_is_saved(alice, vision_models, broker):
    conversation = Conversation.objects.create(user=alice, model="deepseek-chat")
    image = make_attachment(alice)
    with pytest.raises(ChatError) as refused:
        actions.do_send_message(alice, conversation.id, "look", attachments=[str(image.id)])
    assert refused.value.code == "vision_unsupported" and "deepseek-chat" in refused.value.message
    assert Message.objects.count() == 0 and Attachment.objects.get(id=image.id).message is None
    assert broker.llen("model.deepseek-chat") == 0


def test_another_users_image_cannot_be_sent(alice, bob, vision_models, broker):
    conversation = Conversation.objects.create(user=bob, model="deepseek-vl")
    alices = make_attachment(alice)
    for ids in ([str(alices.id)], ["not-an-id"], [str(alices.id)] * 1 + ["x"], "abc"):
        with pytest.raises(ChatError):
            actions.do_send_message(bob, conversation.id, "mine now", attachments=ids)
    assert Message.objects.count() == 0 and Attachment.objects.get(id=alices.id).message is None


def test_too_many_images_in_one_message_are_refused(alice, vision_models, settings, broker):
    settings.ATTACHMENTS_PER_MESSAGE = 1
    conversation = Conversation.objects.create(user=alice, model="deepseek-vl")
    ids = [str(make_attachment(alice).id), str(make_attachment(alice).id)]
    with pytest.raises(ChatError) as refused:
        actions.do_send_message(alice, conversation.id, "two", attachments=ids)
    assert refused.value.code == "too_many_attachments" and Message.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_deleting_the_conversation_deletes_its_images(client, alice, vision_models, media, broker):
    conversation = Conversation.objects.create(user=alice, model="deepseek-vl")
    image = make_attachment(alice)
    actions.do_send_message(alice, conversation.id, "keep?", attachments=[str(image.id)])
    assert len(stored_files(media)) == 2
    client.force_login(alice)
    client.post(f"/c/{conversation.id}/delete/")
    assert not Attachment.objects.exists() and stored_files(media) == []


