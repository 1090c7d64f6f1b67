"""The tiny LLaVA demo model: builds offline, loads without torchvision, sees its images."""
from __future__ import annotations

import importlib.util
import logging

import pytest

from inference.demo_vision import (
    IMAGE_SIZE,
    IMAGE_TOKEN,
    IMAGE_TOKENS_PER_IMAGE,
    QUANTIZATION_SKIP_MODULES,
    VISION_BUILD_STEPS,
    build_demo_vision_model,
    image_prompt_messages,
)


@pytest.fixture(scope="module")
def vision_model_path(tmp_path_factory, demo_model_path):
    target = tmp_path_factory.mktemp("vision") / "demo-vision"
    steps: list[str] = []
    build_demo_vision_model(target, steps.append, tokenizer_from=demo_model_path)
    assert len(steps) == VISION_BUILD_STEPS
    return target


@pytest.fixture(scope="module")
def processor(vision_model_path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(vision_model_path)


@pytest.fixture(scope="module")
def model(vision_model_path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(vision_model_path).eval()


def _image(color=(200, 30, 30), size=(64, 64)):
    from PIL import Image

    return Image.new("RGB", size, color)


def _noise_image(size=(64, 64)):
    import random

    from PIL import Image

    return Image.frombytes("RGB", size, random.Random(7).randbytes(size[0] * size[1] * 3))


def _inputs(processor, images, text="What is in the picture?"):
    prompt = processor.apply_chat_template(
        image_prompt_messages(text, len(images)), add_generation_prompt=True, tokenize=False
    )
    return processor(images=images, text=prompt, return_tensors="pt")


def test_it_builds_without_torchvision_installed(vision_model_path):
    assert importlib.util.find_spec("torchvision") is None
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (vision_model_path / name).is_file(), name
    assert not vision_model_path.with_name(vision_model_path.name + ".partial").exists()


def test_without_a_tokenizer_folder_it_trains_the_same_tokenizer_and_builds_the_same_files(
    vision_model_path, tmp_path
):
    target = tmp_path / "demo-vision"
    build_demo_vision_model(target)
    files = ("tokenizer.json", "tokenizer_config.json", "config.json", "processor_config.json", "model.safetensors")
    for name in files:
        assert (target / name).read_bytes() == (vision_model_path / name).read_bytes(), name


def test_auto_processor_gives_a_llava_processor_with_the_pil_image_processor(processor):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    assert isinstance(processor, LlavaProcessor)
    assert type(processor.image_processor) is CLIPImageProcessorPil
    assert processor.image_token == IMAGE_TOKEN
    assert processor.image_processor.crop_size == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}


def test_the_tokenizer_is_the_text_demo_tokenizer_plus_the_image_token(processor, model, demo_model_path):
    from transformers import AutoTokenizer

    text_tokenizer = AutoTokenizer.from_pretrained(demo_model_path)
    sample = "def main():\n    print('hello, world')  # <think>ok</think>"
    assert processor.tokenizer.encode(sample, add_special_tokens=False) == text_tokenizer.encode(
        sample, add_special_tokens=False
    )
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert image_id == len(text_tokenizer) == processor.image_token_id
    assert model.config.image_token_id == model.config.image_token_index == image_id
    assert model.config.text_config.vocab_size == len(processor.tokenizer)


def test_a_prompt_with_one_image_expands_to_the_expected_number_of_image_tokens(processor):
    inputs = _inputs(processor, [_image()])
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(processor.image_token_id) == IMAGE_TOKENS_PER_IMAGE == 16
    assert tuple(inputs["pixel_values"].shape) == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    two = _inputs(processor, [_image(), _noise_image()])
    assert two["input_ids"][0].tolist().count(processor.image_token_id) == 2 * IMAGE_TOKENS_PER_IMAGE
    assert tuple(two["pixel_values"].shape) == (2, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_the_model_generates_greedily_from_an_image_and_text_on_cpu(processor, model):
    import torch

    inputs = _inputs(processor, [_image()])
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert out.shape == (1, prompt_length + 5)
    assert out[0, :prompt_length].tolist() == inputs["input_ids"][0].tolist()
    assert isinstance(processor.decode(out[0, prompt_length:]), str)


def test_two_different_images_give_different_first_token_logits(processor, model):
    import torch

    with torch.inference_mode():
        red = model(**_inputs(processor, [_image()])).logits[0, -1].float()
        noise = model(**_inputs(processor, [_noise_image()])).logits[0, -1].float()
    assert not torch.allclose(red, noise)


def test_pixel_values_on_the_first_forward_only_match_generate(processor, model):
    """The engine's own loop: the prompt and the image go in once, then one token per step."""
    import torch
    from transformers import DynamicCache

    inputs = _inputs(processor, [_noise_image()])
    with torch.inference_mode():
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        cache = DynamicCache(config=model.config)
        logits = model(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], cache=cache, use_cache=True
        ).logits
        tokens = []
        for _ in range(4):
            tokens.append(int(logits[0, -1].argmax()))
            logits = model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True).logits
    assert tokens == expected.tolist()


def test_the_processor_resizes_a_large_image_to_the_tower_size(processor):
    inputs = _inputs(processor, [_noise_image(size=(800, 600))])
    assert tuple(inputs["pixel_values"].shape) == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert inputs["input_ids"][0].tolist().count(processor.image_token_id) == IMAGE_TOKENS_PER_IMAGE
    grey = processor(images=_image(size=(33, 900)).convert("L"), text=IMAGE_TOKEN, return_tensors="pt")
    assert tuple(grey["pixel_values"].shape) == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_the_chat_template_renders_text_only_and_image_and_text_messages(processor):
    render = processor.tokenizer.apply_chat_template
    text_only = [{"role": "user", "content": "Hello"}]
    assert render(text_only, add_generation_prompt=True, tokenize=False) == (
        "<｜begin▁of▁sentence｜><｜User｜>Hello<｜Assistant｜>"
    )
    assert image_prompt_messages("What is this?", 2) == [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What is this?"}],
        }
    ]
    conversation = [
        {"role": "system", "content": "Be brief."},
        *image_prompt_messages("What is this?", 1),
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA red square."},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image"}]},
    ]
    assert render(conversation, add_generation_prompt=True, tokenize=False, enable_thinking=True) == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜><image>What is this?"
        "<｜Assistant｜>A red square.<｜end▁of▁sentence｜>"
        "<｜User｜>And this?<image><｜Assistant｜><think>\n"
    )
    # The processor carries the same template, so either object renders a prompt.
    assert processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False) == render(
        conversation, add_generation_prompt=True, tokenize=False
    )


def test_the_model_is_small(model, vision_model_path):
    params = sum(p.numel() for p in model.parameters())
    assert params < 10_000_000
    assert (vision_model_path / "model.safetensors").stat().st_size < 20_000_000


def test_it_loads_with_bitsandbytes_8bit_on_cpu_and_generates(processor, vision_model_path):
    import torch
    from bitsandbytes.nn import Linear8bitLt
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    quantized = AutoModelForImageTextToText.from_pretrained(
        vision_model_path,
        dtype=torch.bfloat16,
        quantization_config=BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES),
    ).eval()
    assert isinstance(quantized.model.language_model.layers[0].self_attn.q_proj, Linear8bitLt)
    # The vision tower and projector stay in bf16: the skip list names them from the model's root.
    assert type(quantized.model.vision_tower.encoder.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert type(quantized.model.multi_modal_projector.linear_1) is torch.nn.Linear
    inputs = _inputs(processor, [_image()])
    with torch.inference_mode():
        out = quantized.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 5)
