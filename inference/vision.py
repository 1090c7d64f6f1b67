"""Prompts with images for vision-language models: chat template parts → ids + pixel values.

The engine knows bytes and text, not Django rows: a history message may carry `images`, a list
of encoded images (already validated and re-encoded by the web tier). Images are resized by the
model's own processor to what its vision tower expects; the stored originals are untouched.
"""
from __future__ import annotations

import io
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


def _decode(images: list[bytes]) -> list[Any]:
    from PIL import Image

    return [Image.open(io.BytesIO(raw)).convert("RGB") for raw in images]


def encode_with_images(
    processor: Any, history: list[dict[str, Any]], budget: int, thinking: bool
) -> VisionPrompt:
    """Render the history (oldest turns dropped until it fits `budget` tokens) and process its images."""

    def encode(messages: list[dict[str, Any]]) -> VisionPrompt:
        text = processor.apply_chat_template(
            [_parts(m) for m in messages], tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
        images = _decode([raw for m in messages for raw in m.get("images") or []])
        inputs = processor(images=images or None, text=text, return_tensors="pt")
        prompt = VisionPrompt(inputs.pop("input_ids")[0].tolist())
        inputs.pop("attention_mask", None)
        prompt.model_inputs = dict(inputs)
        return prompt

    # A dropped turn goes with its images.
    return fit_newest_turns(history, budget, encode,
                            "The message and its images do not fit the model's context with room for an answer.")
