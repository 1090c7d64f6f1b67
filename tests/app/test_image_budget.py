"""The per-request image budget and the per-conversation image count, on the socket and on /v1: tiny PNGs that
declare 6000 × 6000 pixels (5 KB on the wire, 108 MB as RGB) are counted by what they declare and refused
before anything is decoded, written or queued."""
from __future__ import annotations

import base64
import io

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from PIL import Image

from chat.accounts import api_keys
from chat.conversations import actions, uploads
from chat.conversations.models import Attachment, Conversation, Message
from chat.core.errors import ChatError
from deepseek_web.asgi import application
from tests.support.sockets import open_socket, receive, send

pytestmark = pytest.mark.django_db(transaction=True)
VISION = "deepseek-vl"
SIDE = 6000  # 36,000,000 pixels each: three of them are over the default 100,000,000


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def bomb() -> bytes:
    """A one-bit PNG of SIDE × SIDE pixels: about 4 KB."""
    out = io.BytesIO()
    Image.new("1", (SIDE, SIDE)).save(out, "PNG")
    return out.getvalue()


def small_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(out, "PNG")
    return out.getvalue()


def data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def counts() -> tuple[int, int, int, int]:
    return (Conversation.objects.count(), Message.objects.count(), Attachment.objects.count(),
            Attachment.objects.filter(message__isnull=False).count())


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """How many images the web tier validated (decoded) as uploads are: a counting wrapper, the real code runs."""
    seen: list[int] = []
    real = uploads.validate_upload

    def counting(raw: bytes):
        seen.append(len(raw))
        return real(raw)

    monkeypatch.setattr(uploads, "validate_upload", counting)
    return seen


# -- the socket -------------------------------------------------------------------------------------------


async def test_a_send_whose_images_declare_too_many_pixels_gets_an_error_frame_and_writes_nothing(alice, broker):
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, model=VISION)
    ids = [str((await sync_to_async(uploads.do_upload)(alice, bomb())).id) for _ in range(3)]
    before = await database_sync_to_async(counts)()
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "What are these?", "attachments": ids, "client_id": "c-1"})
    frame = await receive(socket)
    assert frame["type"] == "error" and frame["code"] == "request_pixels_exceeded"
    assert "108,000,000" in frame["message"] and "100,000,000" in frame["message"]
    assert await database_sync_to_async(counts)() == before  # no message, every image still unattached
    assert broker.llen("model.deepseek-vl") == 0
    await socket.disconnect()


def test_a_send_with_more_images_than_one_answer_may_see_is_refused(alice, settings, broker):
    settings.IMAGES_PER_REQUEST = 2
    conversation = Conversation.objects.create(user=alice, model=VISION)
    ids = [str(uploads.do_upload(alice, small_png()).id) for _ in range(3)]
    before = counts()
    with pytest.raises(ChatError) as refused:
        actions.do_send_message(alice, conversation.id, "three", attachments=ids)
    assert refused.value.code == "request_images_exceeded"
    assert "3" in refused.value.message and "2" in refused.value.message
    assert counts() == before and broker.llen("model.deepseek-vl") == 0


def test_a_conversation_holds_at_most_its_image_count(alice, settings, broker):
    settings.IMAGES_PER_CONVERSATION = 3
    conversation = Conversation.objects.create(user=alice, model=VISION)
    first = [str(uploads.do_upload(alice, small_png()).id) for _ in range(2)]
    sent = actions.do_send_message(alice, conversation.id, "two", attachments=first)
    Message.objects.filter(id=sent.assistant_message.id).update(status=Message.Status.DONE, content="ok")
    more = [str(uploads.do_upload(alice, small_png()).id) for _ in range(2)]
    before = counts()
    with pytest.raises(ChatError) as refused:
        actions.do_send_message(alice, conversation.id, "two more", attachments=more)
    assert refused.value.code == "conversation_images_exceeded"
    assert "4" in refused.value.message and "3" in refused.value.message
    assert counts() == before
    # An edit of the first question is another branch of the same conversation: it counts too.
    with pytest.raises(ChatError) as refused:
        actions.do_send_message(alice, conversation.id, "edited", attachments=more, edit_of=sent.user_message.id)
    assert refused.value.code == "conversation_images_exceeded" and counts() == before


# -- /v1 --------------------------------------------------------------------------------------------------


@pytest.fixture
def api(alice):
    key = api_keys.do_create_key(alice, "tests")[1]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://testserver",
                             headers={"Authorization": f"Bearer {key}"})


def history_with_images(turns: int, per_turn: int, raw: bytes) -> list[dict]:
    url = data_url(raw)
    messages: list[dict] = []
    for turn in range(turns):
        parts = [{"type": "image_url", "image_url": {"url": url}} for _ in range(per_turn)]
        messages.append({"role": "user", "content": [{"type": "text", "text": f"picture {turn}?"}, *parts]})
        messages.append({"role": "assistant", "content": "A white square."})
    messages.append({"role": "user", "content": "And all of them together?"})
    return messages


async def refused_by_api(api, messages: list[dict], code: str) -> dict:
    before = await sync_to_async(counts)()
    response = await api.post("/v1/chat/completions", json={"model": VISION, "messages": messages})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["param"] == "messages"
    assert await sync_to_async(counts)() == before, "a refused request wrote rows"
    return error


async def test_a_v1_history_of_200_huge_declared_images_is_refused_before_any_is_decoded(api, decodes):
    error = await refused_by_api(api, history_with_images(50, 4, bomb()), "request_images_exceeded")
    assert "200" in error["message"] and "8" in error["message"]
    assert decodes == []


async def test_v1_images_whose_declared_pixels_exceed_the_budget_are_refused_before_decoding(api, decodes):
    error = await refused_by_api(api, history_with_images(1, 3, bomb()), "request_pixels_exceeded")
    assert "108,000,000" in error["message"] and "100,000,000" in error["message"]
    assert decodes == []


async def test_the_api_and_the_socket_share_the_count_limit(api, settings, decodes):
    settings.IMAGES_PER_REQUEST = 1
    await refused_by_api(api, history_with_images(2, 1, small_png()), "request_images_exceeded")
    assert decodes == []


# -- the worker -------------------------------------------------------------------------------------------


def test_the_worker_reads_and_decodes_only_the_newest_images_within_the_budget(alice, monkeypatch,
                                                                                 demo_vision_path):
    """A branch written before the limits (20 turns with a 6000 × 6000 bomb each): the worker reads the files of
    the newest images that fit the budget only, and the engine decodes each of those once, at the processor's
    size. Older turns keep their text."""
    from django.db.models.fields.files import FieldFile
    from transformers import AutoProcessor

    from chat.worker import replies
    from inference import vision
    from inference.demo_vision import IMAGE_SIZE

    conversation = Conversation.objects.create(user=alice, model=VISION)
    parent, questions = None, []
    for turn in range(20):
        parent = question = Message.objects.create(conversation=conversation, position=2 * turn + 1, parent=parent,
                                                   role=Message.Role.USER, content=f"picture {turn}?")
        uploads.do_upload(alice, bomb())
        Attachment.objects.filter(message__isnull=True).update(message=question)
        parent = Message.objects.create(conversation=conversation, position=2 * turn + 2, parent=question,
                                        role=Message.Role.ASSISTANT, content="A white square.",
                                        status=Message.Status.DONE)
        questions.append(question)
    answer = Message.objects.create(conversation=conversation, position=41, parent=parent,
                                    role=Message.Role.ASSISTANT, status=Message.Status.PENDING)
    opened: list[str] = []
    real_open = FieldFile.open

    def counting_open(self, mode="rb"):
        opened.append(self.name)
        return real_open(self, mode)

    monkeypatch.setattr(FieldFile, "open", counting_open)
    job = replies.claim(answer.id)

    # 100,000,000 pixels hold two 36,000,000-pixel images: the newest two, and only their files were read.
    with_images = [turn for turn in job.history if turn.get("images")]
    assert [turn["content"] for turn in with_images] == ["picture 18?", "picture 19?"]
    assert len(opened) == 2 and len([turn for turn in job.history if turn["role"] == "user"]) == 20

    decoded: list[tuple[int, int]] = []
    real_decode = vision.decode_small

    def counting_decode(raw, image_processor):
        image = real_decode(raw, image_processor)
        decoded.append(image.size)
        return image

    monkeypatch.setattr(vision, "decode_small", counting_decode)
    vision.encode_with_images(AutoProcessor.from_pretrained(demo_vision_path), job.history, 2000, False)
    assert decoded == [(IMAGE_SIZE, IMAGE_SIZE)] * 2
