"""A real vision worker answering a branch full of image bombs (4 KB PNGs declaring 6000 × 6000 pixels) looks at
the newest images within the per-request budget only, and another user's answer streams to its end meanwhile."""
from __future__ import annotations

import asyncio
import io

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from PIL import Image

from chat.conversations.models import Attachment, Conversation, Message
from chat.conversations.uploads import do_upload
from inference.demo_vision import IMAGE_TOKENS_PER_IMAGE as IMAGE_TOKENS
from tests.support.sockets import open_socket, receive_until, send

VISION = "deepseek-vl"
TURNS = 30


def bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (6000, 6000)).save(out, "PNG")
    return out.getvalue()


def small_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (300, 200), "orange").save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def vision_worker(settings, demo_model_path, demo_vision_path, running_worker, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.DEEPSEEK_MODELS = [
        {"name": "deepseek-chat", "path": str(demo_model_path), "demo": True},
        {"name": VISION, "path": str(demo_vision_path), "vision": True, "demo": True, "temperature": 0,
         "max_new_tokens": 12},
    ]
    with running_worker([f"model.{VISION}"], concurrency=2) as running:
        yield running


def branch_of_bombs(user) -> Message:
    """A conversation written before the limits: TURNS questions with a bomb each, every one answered."""
    conversation = Conversation.objects.create(user=user, model=VISION)
    raw, parent = bomb(), None
    for turn in range(TURNS):
        question = Message.objects.create(conversation=conversation, position=2 * turn + 1, parent=parent,
                                          role=Message.Role.USER, content=f"picture {turn}?")
        do_upload(user, raw)
        Attachment.objects.filter(owner=user, message__isnull=True).update(message=question)
        parent = Message.objects.create(conversation=conversation, position=2 * turn + 2, parent=question,
                                        role=Message.Role.ASSISTANT, content="A white square.",
                                        status=Message.Status.DONE)
    Conversation.objects.filter(id=conversation.id).update(current_leaf=parent)
    return parent


def text_tokens(model_path) -> int:
    """The regenerated answer's prompt without its images: every question and the answers before the last."""
    from transformers import AutoProcessor

    history = []
    for turn in range(TURNS):
        history.append({"role": "user", "content": f"picture {turn}?"})
        history.append({"role": "assistant", "content": "A white square."})
    processor = AutoProcessor.from_pretrained(model_path)
    text = processor.apply_chat_template(history[:-1], tokenize=False, add_generation_prompt=True)
    return len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_regenerating_on_a_branch_of_bombs_answers_from_the_newest_images_while_another_user_streams(
    vision_worker, alice, bob, broker, demo_vision_path
):
    last_answer = await database_sync_to_async(branch_of_bombs)(alice)
    bobs = await database_sync_to_async(Conversation.objects.create)(user=bob, model=VISION)
    bobs_image = await sync_to_async(do_upload)(bob, small_png())
    attacker = await open_socket(alice, last_answer.conversation_id)
    other = await open_socket(bob, bobs.id)

    await send(attacker, {"type": "regenerate", "message_id": str(last_answer.id)})
    await send(other, {"type": "send", "content": "What is in the picture?", "attachments": [str(bobs_image.id)],
                       "client_id": "b"})
    bobs_frames, alices_frames = await asyncio.gather(receive_until(other, "done", timeout=120),
                                                      receive_until(attacker, "done", timeout=120))

    bobs_answer = next(f for f in bobs_frames if f["type"] == "message" and f["message"]["role"] == "assistant")
    assert bobs_frames[-1]["finish_reason"] in ("stop", "length")
    assert any(f["type"] == "delta" for f in bobs_frames), "the other user's answer did not stream"
    saved = await database_sync_to_async(Message.objects.get)(id=bobs_answer["message"]["id"])
    assert saved.status == "done" and saved.content

    regenerated = next(f for f in alices_frames if f["type"] == "message")
    assert alices_frames[-1]["finish_reason"] in ("stop", "length")
    answer = await database_sync_to_async(Message.objects.get)(id=regenerated["message"]["id"])
    # Two 36,000,000-pixel images fit the 100,000,000-pixel budget: 2 × 16 image tokens, not 30 × 16.
    # Two 36,000,000-pixel images fit the 100,000,000-pixel budget: the prompt is the branch's text and 2 × 16
    # image tokens, not 30 × 16.
    assert answer.status == "done" and answer.prompt_tokens == text_tokens(demo_vision_path) + 2 * IMAGE_TOKENS
    assert await database_sync_to_async(Attachment.objects.filter(owner=alice).count)() == TURNS  # nothing lost
    await attacker.disconnect()
    await other.disconnect()
