"""Builds the offline demo models: a tiny Qwen2 chat model with a locally trained tokenizer.

The weights are random, so the text is noise, but the tokenizer, the DeepSeek-style chat
template, loading, quantization and generation are the real code paths.
"""
from __future__ import annotations

import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
SPECIAL_TOKENS = ["<|endoftext|>", BOS, EOS, USER, ASSISTANT]
# Ordinary (non-special) added tokens, so they stay visible in decoded text and can be parsed.
THINK_TOKENS = ["<think>", "</think>"]

# DeepSeek-R1-style template. Earlier assistant turns lose their <think> part (as DeepSeek's
# own template does); `enable_thinking` opens a think block for reasoning models.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages if message['role'] == 'system' -%}{{ message['content'] }}{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] -%}"
    "{%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1] | trim -%}{%- endif -%}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<｜Assistant｜>' }}{%- if enable_thinking -%}{{ '<think>\\n' }}{%- endif -%}"
    "{%- endif -%}"
)

# Small enough to build in seconds and answer at interactive speed on a laptop CPU.
DEMO_CHAT_CONFIG = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
# The benchmark model: about 100M parameters, the size FACTS.md measured batching on.
BENCH_CONFIG = dict(
    hidden_size=768,
    intermediate_size=2560,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=4,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
VOCAB_SIZE = 4096
SEED = 20261129

Progress = Callable[[str], None]


def _training_text(limit_bytes: int = 4_000_000) -> Iterator[str]:
    """The Python standard library's own sources: always on disk, no download needed."""
    seen = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        seen += len(text)
        yield text
        if seen > limit_bytes:
            return


def train_tokenizer():
    """A byte-level BPE trained with exactly the pipeline transformers rebuilds for Qwen2."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    return tokenizer


def build_demo_chat_model(
    out_dir: Path, progress: Progress = lambda _: None, config: dict | None = None, tokenizer_from: Path | None = None
) -> Path:
    """Write a Qwen2 chat model with random weights (config, bf16 weights, tokenizer, template)
    to out_dir: tiny by default, or `config`; the tokenizer is trained, or reused from a model."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    if tokenizer_from is not None:
        progress(f"reusing the tokenizer of {tokenizer_from}")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    else:
        progress("training the tokenizer on the Python standard library")
        tokenizer = _new_tokenizer()
    progress("initialising random weights")
    torch.manual_seed(SEED)
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.pad_token_id,
        **(config or DEMO_CHAT_CONFIG),
    )
    model = Qwen2ForCausalLM(model_config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=model_config.bos_token_id,
        eos_token_id=model_config.eos_token_id,
        pad_token_id=model_config.pad_token_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.95,
    )
    progress(f"saving to {out_dir}")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # A finished folder appears atomically, so a crash mid-build never leaves half a model.
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def _new_tokenizer():
    from transformers import PreTrainedTokenizerFast

    raw = train_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=[USER, ASSISTANT],
        model_max_length=DEMO_CHAT_CONFIG["max_position_embeddings"],
    )
    tokenizer.add_tokens(THINK_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
