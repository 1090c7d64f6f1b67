"""Images in a vision prompt are decoded once each, one at a time, and no larger than the processor needs:
a 6000 × 6000 one-bit PNG (4 KB) never becomes 108 MB of RGB. With the real demo-vision processor."""
from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from PIL import Image, ImageFile

from inference import vision
from inference.demo_vision import IMAGE_SIZE, IMAGE_TOKENS_PER_IMAGE

SIDE = 6000


@pytest.fixture(scope="module")
def processor(demo_vision_path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(demo_vision_path)


@pytest.fixture
def decoded(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image decode_small hands back: a counting wrapper around the real function."""
    sizes: list[tuple[int, int]] = []
    real = vision.decode_small

    def counting(raw, image_processor):
        image = real(raw, image_processor)
        sizes.append(image.size)
        return image

    monkeypatch.setattr(vision, "decode_small", counting)
    return sizes


@pytest.fixture
def loaded(monkeypatch) -> list[tuple[int, int]]:
    """The size at which Pillow decoded each image's pixels (after JPEG's draft mode took effect)."""
    sizes: list[tuple[int, int]] = []
    real = ImageFile.ImageFile.load

    def recording(self):
        result = real(self)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    return sizes


def bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (SIDE, SIDE)).save(out, "PNG")
    return out.getvalue()


def test_each_image_is_decoded_once_at_the_processors_size_however_many_turns_are_dropped(processor, decoded):
    # Ten turns with a bomb each (a new bytes object per turn, as the worker reads one per attachment), and
    # answers long enough that only the newest turns fit: fit_newest_turns tries again for each dropped turn.
    history = []
    for turn in range(10):
        history.append({"role": "user", "content": f"picture {turn}", "images": [bomb()]})
        history.append({"role": "assistant", "content": "a white square " * 20})
    history.append({"role": "user", "content": "and now?", "images": [bomb()]})
    prompt = vision.encode_with_images(processor, history, budget=400, thinking=False)
    assert len(prompt) <= 400
    kept = prompt.model_inputs["pixel_values"].shape[0]
    assert 1 <= kept < 11 and prompt.count(processor.tokenizer.convert_tokens_to_ids("<image>")) == (
        kept * IMAGE_TOKENS_PER_IMAGE)
    assert len(decoded) == 11, "an image was decoded more than once across the retries"
    assert set(decoded) == {(IMAGE_SIZE, IMAGE_SIZE)}, "an image was kept larger than the processor's size"


def test_a_jpeg_is_decoded_at_a_fraction_of_its_size_by_libjpeg(processor, loaded):
    out = io.BytesIO()
    Image.new("RGB", (4000, 3000), "orange").save(out, "JPEG")
    small = vision.decode_small(out.getvalue(), processor.image_processor)
    assert small.mode == "RGB" and small.size == (75, IMAGE_SIZE)  # shortest edge 56, aspect kept
    assert loaded and max(w * h for w, h in loaded) <= 4000 * 3000 // 64


def test_a_png_is_reduced_before_it_becomes_rgb(processor, loaded):
    small = vision.decode_small(bomb(), processor.image_processor)
    assert small.mode == "RGB" and small.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert loaded == [(SIDE, SIDE)]  # PNG has no scaled decoding: once at its native one byte a pixel, then reduced


@pytest.mark.parametrize("config,size,expected", [
    ({"size": {"shortest_edge": 336}}, (6000, 3000), (672, 336)),  # CLIP / LLaVA
    ({"size": {"height": 384, "width": 384}}, (6000, 3000), (768, 384)),  # SigLIP: squashed to 384², so both ≥ 384
    ({"size": {"longest_edge": 980}}, (6000, 3000), (980, 490)),  # Idefics
    ({"size": {"shortest_edge": 3136, "longest_edge": 1_000_000}, "max_pixels": 1_000_000}, (4000, 4000),
     (1000, 1000)),  # Qwen2-VL: a pixel cap
    ({"size": {"shortest_edge": 336}}, (200, 100), (200, 100)),  # never enlarged
    ({"size": {"shortest_edge": 336}, "do_resize": False}, (6000, 3000), (6000, 3000)),
    ({}, (6000, 3000), (6000, 3000)),  # a processor we cannot read: only the request's pixel budget bounds it
])
def test_the_decode_size_follows_the_processors_config(config, size, expected):
    assert vision.decode_size(SimpleNamespace(**config), *size) == expected
