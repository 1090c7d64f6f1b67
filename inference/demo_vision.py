"""A tiny vision-language demo model (LLaVA: CLIP vision tower + Qwen2 text model), built offline.

Like the text demo model the weights are random, so the answers are noise, but the processor
(PIL image processing, `<image>` expansion), the chat template with image parts, loading with
`AutoProcessor`/`AutoModelForImageTextToText`, quantization and generation are the real code
paths. Nothing here needs torchvision: the image processor is `CLIPImageProcessorPil`.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from inference.demo import (  # private to demo.py, but it is the exact text-demo tokenizer
    ASSISTANT,
    BOS,
    DEMO_CHAT_CONFIG,
    EOS,
    SEED,
    USER,
    _new_tokenizer,
)

IMAGE_TOKEN = "<image>"
# The vision tower: 56×56 pixels in 14×14 patches → 4×4 = 16 patches (+1 CLS position).
IMAGE_SIZE = 56
PATCH_SIZE = 14
# "default" drops the CLS position, so one image becomes exactly one `<image>` token per patch.
VISION_FEATURE_SELECT_STRATEGY = "default"
IMAGE_TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH_SIZE) ** 2
DEMO_VISION_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    projection_dim=64,
)
# progress() calls made by build_demo_vision_model: tokenizer, weights, processor, saving.
VISION_BUILD_STEPS = 4
# `llm_int8_skip_modules` for bitsandbytes: transformers 5 matches these from the module path's
# start (or as a suffix), so a bare "vision_tower" matches nothing and the tower gets quantized.
QUANTIZATION_SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]

# The text demo's DeepSeek-R1-style template (inference/demo.py), with message content that is
# either a string or a list of parts: {"type": "image"} renders as `<image>` (which the processor
# expands to IMAGE_TOKENS_PER_IMAGE copies), {"type": "text", "text": ...} as its text.
_RENDER_CONTENT = (
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}{{ '" + IMAGE_TOKEN + "' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
)
VISION_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages if message['role'] == 'system' -%}"
    "{%- set content = message['content'] -%}" + _RENDER_CONTENT + "{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- set content = message['content'] -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '" + USER + "' }}" + _RENDER_CONTENT +
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- if content is not string -%}"
    "{%- set content = content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1] | trim -%}{%- endif -%}"
    "{{ '" + ASSISTANT + "' + content + '" + EOS + "' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '" + ASSISTANT + "' }}{%- if enable_thinking -%}{{ '<think>\\n' }}{%- endif -%}"
    "{%- endif -%}"
)


def image_prompt_messages(text: str, images: int) -> list[dict]:
    """One user turn for the chat template: `images` image parts, then the text."""
    parts: list[dict] = [{"type": "image"} for _ in range(images)]
    parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def build_demo_vision_model(
    target: Path, progress: Callable[[str], None] = lambda _: None, *, tokenizer_from: Path | None = None
) -> None:
    """Write a LLaVA model with random weights (config, bf16 safetensors, tokenizer with `<image>`,
    PIL CLIP image processor, LlavaProcessor, chat template) to `target`, atomically.

    The tokenizer is reused from `tokenizer_from` (the text demo model's folder) or trained."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )

    target = Path(target)
    if tokenizer_from is not None:
        progress(f"reusing the tokenizer of {tokenizer_from}")
        # Its tokenizer.json as is (AutoTokenizer would rebuild a Qwen2Tokenizer: same ids, other
        # class), so a reused and a freshly trained tokenizer save the same files.
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_from)
        for loading_only in ("is_local", "local_files_only"):
            tokenizer.init_kwargs.pop(loading_only, None)
    else:
        progress("training the tokenizer on the Python standard library")

        tokenizer = _new_tokenizer()
    tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    tokenizer.chat_template = VISION_CHAT_TEMPLATE
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    progress("initialising random weights (CLIP vision tower + Qwen2 text model)")
    torch.manual_seed(SEED)
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.pad_token_id,
        **DEMO_CHAT_CONFIG,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**DEMO_VISION_CONFIG),
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=IMAGE_TOKENS_PER_IMAGE,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=VISION_FEATURE_SELECT_STRATEGY,
        vision_feature_layer=-1,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    model = LlavaForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=text_config.bos_token_id,
        eos_token_id=text_config.eos_token_id,
        pad_token_id=text_config.pad_token_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.95,
    )

    progress(f"building the processor ({IMAGE_SIZE}×{IMAGE_SIZE} images, {IMAGE_TOKENS_PER_IMAGE} tokens each)")
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy=VISION_FEATURE_SELECT_STRATEGY,
        num_additional_image_tokens=1,  # CLIP's CLS position, dropped again by "default"
        image_token=IMAGE_TOKEN,
        chat_template=VISION_CHAT_TEMPLATE,
    )

    progress(f"saving to {target}")
    tmp = target.with_name(target.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    # A finished folder appears atomically, so a crash mid-build never leaves half a model.
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
