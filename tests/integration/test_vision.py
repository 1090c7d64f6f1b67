"""Image questions end to end: the vision demo model (LLaVA) through the engine and a real worker."""
from __future__ import annotations

import io

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from PIL import Image

from chat.conversations.models import Attachment, Conversation, Message
from chat.conversations.uploads import do_upload
from chat.core.served_models import get_model
from inference.engine import Engine, GenerationStats, SamplingParams
from inference.loading import load_model
from inference.vision import VisionPrompt
from tests.support.sockets import open_socket, receive, receive_until, send

VISION = "deepseek-vl"


def image_bytes(color, size=(300, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def vision_settings(settings, demo_model_path, demo_vision_path):
    settings.DEEPSEEK_MODELS = [
        {"name": "deepseek-chat", "path": str(demo_model_path), "demo": True},
        {"name": VISION, "path": str(demo_vision_path), "vision": True, "demo": True, "temperature": 0,
         "max_new_tokens": 12},
    ]


@pytest.fixture
def engine(vision_settings):
    spec = get_model(VISION)
    return Engine(load_model(spec), spec, None)


def test_the_engine_puts_each_image_into_the_prompt_and_answers(engine):
    history = [{"role": "user", "content": "What colour is this?", "images": [image_bytes("red")]}]
    prompt = engine.encode_chat(history, 12)
    assert isinstance(prompt, VisionPrompt)
    image_token = engine.model.config.image_token_index
    assert prompt.count(image_token) == 16  # the demo tower's 4×4 patches
    assert tuple(prompt.model_inputs["pixel_values"].shape) == (1, 3, 56, 56)  # resized by the processor
    stats = GenerationStats()
    text = "".join(d.content for d in engine.generate(prompt, SamplingParams(max_new_tokens=12, temperature=0), stats))
    assert stats.completion_tokens > 0 and stats.prompt_tokens == len(prompt) and (text or stats.finish_reason)


def test_two_images_in_two_turns_both_reach_the_prompt_and_text_only_turns_work(engine):
    history = [
        {"role": "user", "content": "first", "images": [image_bytes("red")]},
        {"role": "assistant", "content": "a red square"},
        {"role": "user", "content": "and now?", "images": [image_bytes("blue"), image_bytes("green")]},
    ]
    prompt = engine.encode_chat(history, 12)
    assert prompt.count(engine.model.config.image_token_index) == 48
    assert prompt.model_inputs["pixel_values"].shape[0] == 3
    text_only = engine.encode_chat([{"role": "user", "content": "no picture"}], 12)
    assert engine.model.config.image_token_index not in text_only


def test_an_image_too_big_for_the_context_is_refused_with_a_clear_error(vision_settings, settings,
                                                                         demo_vision_path):
    from inference.engine import PromptTooLong

    settings.DEEPSEEK_MODELS = [{"name": VISION, "path": str(demo_vision_path), "vision": True, "max_context": 30,
                                 "max_new_tokens": 10}]
    spec = get_model(VISION)
    tight = Engine(load_model(spec), spec, None)
    with pytest.raises(PromptTooLong):
        tight.encode_chat([{"role": "user", "content": "hello there", "images": [image_bytes("red")]}], 10)


@pytest.fixture
def vision_worker(vision_settings, running_worker):
    with running_worker([f"model.{VISION}"], concurrency=2) as running:
        yield running


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_a_question_about_an_uploaded_image_streams_an_answer(vision_worker, alice, broker, settings,
                                                                    tmp_path):
    settings.MEDIA_ROOT = tmp_path
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice, model=VISION)
    image = await sync_to_async(do_upload)(alice, image_bytes("orange"))
    socket = await open_socket(alice, conversation.id)
    await send(socket, {"type": "send", "content": "What is in the picture?", "attachments": [str(image.id)],
                        "client_id": "v"})
    question, answer = await receive(socket), await receive(socket)
    assert [a["id"] for a in question["message"]["attachments"]] == [str(image.id)]
    frames = await receive_until(socket, "done", timeout=120)
    assert frames[-1]["finish_reason"] in ("stop", "length")
    saved = await database_sync_to_async(Message.objects.get)(id=answer["message"]["id"])
    assert saved.status == "done" and saved.prompt_tokens > 16
    attached = await database_sync_to_async(Attachment.objects.get)(id=image.id)
    assert attached.message_id is not None and str(attached.message_id) == question["message"]["id"]
    await socket.disconnect()
