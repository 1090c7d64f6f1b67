"""Prompts with images for vision-language models: chat template parts → ids + pixel values.

The engine knows bytes and text, not Django rows: a history message may carry `images`, a list
of encoded images (already validated and re-encoded by the web tier, and already cut to the caller's
per-request budget). Each image is decoded once per prompt, one at a time, and brought down at decode
time to the smallest size the model's processor still resizes down from (a JPEG is decoded at 1/2 to 1/8
scale by libjpeg itself): a 6000 × 6000 one-bit PNG is never 108 MB of RGB, only its native 36 MB for a
moment, and what stays in memory is the processor's size. The processor then resizes as it always does;
the stored originals are untouched.
"""
from __future__ import annotations

import io
import math
from typing import Any

from inference.turns import fit_newest_turns

# Module names kept in full precision when a vision model is quantized: the vision tower and
# its projector are small and sensitive, and the output head decides every token. transformers
# matches these as prefixes or suffixes of module paths (LLaVA: model.vision_tower…, Qwen2-VL: visual…).
VISION_SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "model.visual", "visual", "lm_head"]


class VisionPrompt(list):
    """Prompt token ids plus the other model inputs (pixel values…) for the first forward pass."""

    model_inputs: dict[str, Any]


def _parts(message: dict[str, Any]) -> dict[str, Any]:
    images = message.get("images") or []
    if not images:
        return {"role": message["role"], "content": message["content"]}
    content: list[dict[str, Any]] = [{"type": "image"} for _ in images]
    content.append({"type": "text", "text": message["content"]})
    return {"role": message["role"], "content": content}


def _size_field(size: Any, name: str) -> int | None:
    """A field of an image processor's `size` (a dict in transformers 4, a SizeDict in 5)."""
    value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
    return value if isinstance(value, int) and value > 0 else None


def decode_size(image_processor: Any, width: int, height: int) -> tuple[int, int]:
    """The smallest size an image of `width` × `height` can be decoded at without the processor seeing fewer
    pixels than it would take from the original: its resize target, by the processor's config (a pixel
    cap as Qwen2-VL's, a shortest edge as CLIP's, a fixed height and width as SigLIP's, a longest edge).
    Never larger than the original; the original size when the processor does not resize or says nothing
    we know (then only the caller's pixel budget bounds it)."""
    size = getattr(image_processor, "size", None) or {}
    if not getattr(image_processor, "do_resize", True):
        return width, height
    if max_pixels := getattr(image_processor, "max_pixels", None) or _size_field(size, "max_pixels"):
        factor = math.sqrt(max_pixels / (width * height))
    elif shortest := _size_field(size, "shortest_edge"):
        factor = shortest / min(width, height)
    elif (target_height := _size_field(size, "height")) and (target_width := _size_field(size, "width")):
        factor = max(target_width / width, target_height / height)
    elif longest := _size_field(size, "longest_edge"):
        factor = longest / max(width, height)
    else:
        return width, height
    if factor >= 1:
        return width, height
    # Rounded up (never below the target), less a hair of float error: 56 / 6000 * 6000 is 56.000000000000004.
    return max(1, math.ceil(width * factor - 1e-6)), max(1, math.ceil(height * factor - 1e-6))


def decode_small(raw: bytes, image_processor: Any) -> Any:
    """One image as RGB at decode_size: JPEG's draft mode decodes it at a fraction of its size, and the rest
    is reduced right after decoding, before the RGB conversion (which would triple a grey image)."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as image:
        target = decode_size(image_processor, *image.size)
        if target != image.size:
            image.draft("RGB", target)  # JPEG only: libjpeg scales by 1/2…1/8, never below target
        small: Image.Image = image.convert("L") if image.mode == "1" else image  # "1" resizes by nearest only
        if target != small.size:
            small = small.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
        return small.convert("RGB")


def encode_with_images(
    processor: Any, history: list[dict[str, Any]], budget: int, thinking: bool
) -> VisionPrompt:
    """Render the history (oldest turns dropped until it fits `budget` tokens) and process its images."""
    # Keyed by the bytes object (one per stored attachment, alive as long as `history`): each image is decoded
    # once for all of fit_newest_turns' tries, and a turn it drops costs no second decode of the others.
    decoded: dict[int, Any] = {}

    def image(raw: bytes) -> Any:
        if id(raw) not in decoded:
            decoded[id(raw)] = decode_small(raw, processor.image_processor)
        return decoded[id(raw)]

    def encode(messages: list[dict[str, Any]]) -> VisionPrompt:
        text = processor.apply_chat_template(
            [_parts(m) for m in messages], tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
        images = [image(raw) for m in messages for raw in m.get("images") or []]
        inputs = processor(images=images or None, text=text, return_tensors="pt")
        prompt = VisionPrompt(inputs.pop("input_ids")[0].tolist())
        inputs.pop("attention_mask", None)
        prompt.model_inputs = dict(inputs)
        return prompt

    # A dropped turn goes with its images.
    return fit_newest_turns(history, budget, encode,
                            "The message and its images do not fit the model's context with room for an answer.")
