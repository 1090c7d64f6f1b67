"""The engine on the real demo model: template, tokenizer round trip, sampling, streaming text."""
from __future__ import annotations

import pytest

from inference.demo import CHAT_TEMPLATE
from inference.detokenizer import IncrementalDetokenizer
from inference.engine import Engine, GenerationStats, PromptTooLong, ReasoningSplitter, SamplingParams
from inference.loading import ModelCache, ModelLoadError, load_model
from inference.registry import ModelSpec


@pytest.fixture(scope="module")
def spec(demo_model_path) -> ModelSpec:
    return ModelSpec(name="demo", path=str(demo_model_path), max_context=512, max_new_tokens=32)


@pytest.fixture(scope="module")
def engine(spec) -> Engine:
    return Engine(load_model(spec))


def run(engine: Engine, ids, params) -> tuple[str, GenerationStats]:
    stats = GenerationStats()
    text = "".join(d.content for d in engine.generate(ids, params, stats))
    return text, stats


def test_the_tokenizer_reloads_with_the_same_ids(engine, demo_model_path):
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(demo_model_path)
    sample = "def answer(x):\n    return '你好, wörld' # </think>"
    assert again(sample)["input_ids"] == engine.tokenizer(sample)["input_ids"]
    assert again.decode(again(sample)["input_ids"]) == sample
    assert len(again) == engine.model.config.vocab_size


def test_the_template_drops_earlier_reasoning_and_opens_a_turn(engine):
    text = engine.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "<think>\nsecret</think>\n\nHello"}, {"role": "user", "content": "Again"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert text == ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜>"
                    "<｜User｜>Again<｜Assistant｜>")
    assert engine.tokenizer.chat_template == CHAT_TEMPLATE


def test_greedy_output_is_deterministic_and_capped_by_max_tokens(engine):
    ids = engine.encode_chat([{"role": "user", "content": "Hello"}], 16)
    first, stats = run(engine, ids, SamplingParams(max_new_tokens=16, temperature=0))
    second, _ = run(engine, ids, SamplingParams(max_new_tokens=16, temperature=0))
    assert first == second and first
    assert stats.completion_tokens == 16 and stats.finish_reason == "length"
    assert stats.prompt_tokens == len(ids)


@pytest.mark.parametrize("seed", [None, 3])  # the batched sampler and the solo one
def test_a_vanishingly_small_temperature_samples_greedily_instead_of_failing(engine, seed):
    # Found by the API fuzzer: temperature 2.2e-313 turned the logits into inf and the sampler failed.
    ids = engine.encode_chat([{"role": "user", "content": "Hello"}], 8)
    greedy, _ = run(engine, ids, SamplingParams(max_new_tokens=8, temperature=0))
    tiny, stats = run(engine, ids, SamplingParams(max_new_tokens=8, temperature=2.2250738585e-313, top_p=0.5,
                                                  seed=seed))
    assert tiny == greedy and stats.completion_tokens == 8


def test_a_seed_makes_sampling_repeatable(engine):
    ids = engine.encode_chat([{"role": "user", "content": "Tell me a story"}], 24)
    a, _ = run(engine, ids, SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.9, seed=7))
    b, _ = run(engine, ids, SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.9, seed=7))
    c, _ = run(engine, ids, SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.9, seed=8))
    assert a == b and a != c


def test_it_stops_at_the_end_of_sentence_token(engine):
    ids = engine.encode_chat([{"role": "user", "content": "Hello"}], 8)
    greedy = engine.generate(ids, SamplingParams(max_new_tokens=8, temperature=0), GenerationStats())
    next(greedy)
    greedy.close()
    # Make the token greedy decoding picks first count as end-of-sentence for this engine.
    import torch

    with torch.inference_mode():
        first = int(engine.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    stopping = Engine.__new__(Engine)
    stopping.__dict__.update(engine.__dict__, eos_ids=frozenset({first}))
    text, stats = run(stopping, ids, SamplingParams(max_new_tokens=8, temperature=0))
    assert (text, stats.completion_tokens, stats.finish_reason) == ("", 1, "stop")


def test_the_streamed_text_equals_the_decoded_tokens(engine):
    """Deltas never split a multi-byte character, and together they are the full decode."""
    sample = "中文字符 and ü, then emoji 🙂 and code: `x = 1`"
    ids = engine.tokenizer(sample, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(engine.tokenizer)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == sample
    assert not any("\ufffd" in p for p in pieces)


def test_a_nul_byte_from_the_model_never_reaches_the_text(engine):
    """PostgreSQL refuses NUL in text columns; a random (or broken) model can emit the byte."""
    nul = engine.tokenizer.convert_tokens_to_ids("Ā")  # byte-level BPE's symbol for byte 0x00
    assert engine.tokenizer.decode([nul]) == "\x00"
    detok = IncrementalDetokenizer(engine.tokenizer)
    text = "".join(detok.push(t) for t in [nul, *engine.tokenizer("ok", add_special_tokens=False)["input_ids"]])
    text += detok.flush()
    assert "\x00" not in text and text == "\ufffdok"


def test_invalid_bytes_are_not_held_back_until_the_end(engine):
    """A broken or random model may emit bytes that never form a character: release them."""
    lead_byte = engine.tokenizer("中", add_special_tokens=False)["input_ids"][0]
    detok = IncrementalDetokenizer(engine.tokenizer)
    pieces = [detok.push(lead_byte) for _ in range(12)]
    assert sum(1 for p in pieces if p) >= 2 and "\ufffd" in "".join(pieces)


def test_it_drops_the_oldest_turns_to_fit_the_context(engine, spec):
    long_turn = "word " * 150
    history = [{"role": "system", "content": "sys"}]
    for i in range(4):
        history += [{"role": "user", "content": f"{i} {long_turn}"}, {"role": "assistant", "content": long_turn}]
    history.append({"role": "user", "content": "last question"})
    ids = engine.encode_chat(history, 32)
    assert len(ids) <= spec.max_context - 32
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<｜begin▁of▁sentence｜>sys<｜User｜>") and "last question" in text and "0 word" not in text


def test_it_refuses_a_message_that_cannot_fit(engine):
    with pytest.raises(PromptTooLong, match="512 tokens"):
        engine.encode_chat([{"role": "user", "content": "word " * 2000}], 32)


@pytest.mark.parametrize("chunks", [["<think>\nab", "c</think>\n\nanswer"], ["abc</th", "ink>", "\n\nanswer"]])
def test_reasoning_is_split_from_the_answer(chunks):
    splitter = ReasoningSplitter(thinking=True)
    deltas = [splitter.split(c) for c in chunks] + [splitter.flush()]
    reasoning = "".join(d.reasoning for d in deltas)
    assert reasoning.replace("<think>\n", "") == "abc"
    assert "".join(d.content for d in deltas) == "answer"


def test_a_missing_model_fails_with_one_clear_line(tmp_path):
    spec = ModelSpec(name="ghost", path=str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError) as info:
        ModelCache().get(spec)
    assert "ghost" in str(info.value) and "no model folder" in str(info.value) and "\n" not in str(info.value)


def test_unquantized_models_compute_in_float32_on_a_cpu_and_bf16_otherwise(spec, engine):
    import dataclasses

    import torch

    from inference.loading import compute_dtype

    assert engine.model.dtype == torch.float32  # this machine has no GPU
    assert compute_dtype(spec, "cuda") == torch.bfloat16
    assert compute_dtype(dataclasses.replace(spec, quantization="8bit"), "cpu") == torch.bfloat16
    assert compute_dtype(dataclasses.replace(spec, dtype="bfloat16"), "cpu") == torch.bfloat16


@pytest.mark.parametrize("quantization, min_cosine", [("8bit", 0.99), ("4bit", 0.85)])
def test_quantized_loading_keeps_the_logits(spec, engine, quantization, min_cosine):
    """bitsandbytes on CPU: random weights make near-tied logits, so compare by cosine."""
    import dataclasses

    import torch

    quantized = load_model(dataclasses.replace(spec, quantization=quantization))
    # The attention projections (256 rows) are quantized on every CPU; the MLP's 688-row layers stay
    # bf16 on CPUs whose bitsandbytes 4-bit kernel packs rows by 32 (inference/loading.py).
    linear = type(quantized.model.model.layers[0].self_attn.q_proj).__name__
    assert linear == {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}[quantization]
    ids = torch.tensor([engine.encode_chat([{"role": "user", "content": "Compare these logits"}], 8)])
    with torch.inference_mode():
        full = engine.model(input_ids=ids).logits[0].float()
        quant = quantized.model(input_ids=ids).logits[0].float()
    cosine = torch.nn.functional.cosine_similarity(full, quant, dim=-1).min().item()
    assert cosine > min_cosine
    text, stats = run(Engine(quantized), ids[0].tolist(), SamplingParams(max_new_tokens=4, temperature=0))
    assert stats.completion_tokens == 4
