"""The batching engine on the demo model: join/leave, per-request parameters, stop strings,
cancel, and KV reuse across turns — all against the one-request-at-a-time reference path."""
from __future__ import annotations

import threading
import time

import pytest

from inference.batching import BatchConfig
from inference.engine import Engine, GenerationStats, SamplingParams
from inference.loading import load_model
from inference.registry import ModelSpec
from inference.turns import TurnCache

PROMPTS = ["Hello there", "Write a haiku about the sea.", "What is 2 + 2?", "Tell me about Django.",
           "Bonjour", "Explain batching", "你好", "List three colours"]


@pytest.fixture(scope="module")
def spec(demo_model_path) -> ModelSpec:
    return ModelSpec(name="demo", path=str(demo_model_path), max_context=1024, max_new_tokens=48)


@pytest.fixture(scope="module")
def loaded(spec):
    return load_model(spec)


@pytest.fixture(scope="module")
def solo(loaded, spec) -> Engine:
    return Engine(loaded, spec)


@pytest.fixture
def batched(loaded, spec):
    engine = Engine(loaded, spec, BatchConfig(page_size=16, num_blocks=512, max_batch_tokens=512))
    yield engine
    engine.batcher.stop()


def generate(engine: Engine, ids: list[int], **params) -> tuple[str, GenerationStats]:
    stats = GenerationStats()
    params.setdefault("temperature", 0)
    text = "".join(d.content for d in engine.generate(ids, SamplingParams(params.pop("max_new_tokens", 24), **params),
                                                      stats))
    return text, stats


def prompt(engine: Engine, text: str, max_new: int = 24) -> list[int]:
    return engine.encode_chat([{"role": "user", "content": text}], max_new)


def assert_same_or_near_tie(solo: Engine, ids: list[int], expected: list[int], got: list[int]) -> None:
    """Greedy tokens match; where bf16 rounding flips a near-tie, the two logits are within a hair."""
    import torch

    if expected == got:
        return
    at = next(i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b)
    with torch.inference_mode():
        logits = solo.model(input_ids=torch.tensor([ids + expected[:at]])).logits[0, -1].float()
    gap = abs(float(logits[expected[at]] - logits[got[at]]))
    assert gap < 0.1, f"token {at} differs by a logit gap of {gap}"


def test_greedy_output_is_the_same_alone_and_in_a_batch_of_eight(solo, batched):
    prompts = [prompt(solo, p) for p in PROMPTS]
    alone = [generate(solo, ids)[1].generated_ids for ids in prompts]
    together: dict[int, list[int]] = {}

    def run(i: int) -> None:
        together[i] = generate(batched, prompts[i])[1].generated_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ids in enumerate(prompts):
        assert_same_or_near_tie(solo, ids, alone[i], together[i])


def test_requests_join_and_leave_without_disturbing_each_other(solo, batched):
    long_ids, short_ids = prompt(solo, "Write a long story", 160), prompt(solo, "Hi", 8)
    expected_long = generate(solo, long_ids, max_new_tokens=160)[1].generated_ids
    expected_short = generate(solo, short_ids, max_new_tokens=8)[1].generated_ids
    long_stats = GenerationStats()
    stream = batched.generate(long_ids, SamplingParams(160, temperature=0), long_stats)
    next(stream)  # the long request is decoding…
    _, short_stats = generate(batched, short_ids, max_new_tokens=8)  # …a short one joins and leaves
    assert long_stats.completion_tokens < 160
    for _ in stream:
        pass
    assert_same_or_near_tie(solo, short_ids, expected_short, short_stats.generated_ids)
    assert_same_or_near_tie(solo, long_ids, expected_long, long_stats.generated_ids)
    assert long_stats.completion_tokens == 160 and long_stats.finish_reason == "length"


def test_per_request_parameters_are_honoured_in_one_batch(solo, batched):
    ids = prompt(solo, "Tell me a story")
    results: dict[str, GenerationStats] = {}

    def run(name: str, **params) -> None:
        results[name] = generate(batched, ids, **params)[1]

    jobs = {"short": dict(max_new_tokens=5), "long": dict(max_new_tokens=30),
            "hot": dict(max_new_tokens=30, temperature=1.5), "narrow": dict(max_new_tokens=30, temperature=1.0,
                                                                            top_p=1e-6)}
    threads = [threading.Thread(target=run, args=(name,), kwargs=params) for name, params in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["short"].completion_tokens == 5 and results["long"].completion_tokens == 30
    assert results["short"].generated_ids == results["long"].generated_ids[:5]
    # top_p that keeps only the most likely token is greedy; a high temperature is not.
    assert results["narrow"].generated_ids == results["long"].generated_ids
    assert results["hot"].generated_ids != results["long"].generated_ids


def test_a_seed_makes_sampling_repeatable_in_the_batching_engine(batched, solo):
    ids = prompt(solo, "Tell me a story")
    a = generate(batched, ids, temperature=1.0, seed=11)[0]
    b = generate(batched, ids, temperature=1.0, seed=11)[0]
    assert a == b and a


def test_a_stop_string_ends_the_answer_before_it(solo, batched):
    ids = prompt(solo, "Hello there")
    full, _ = generate(batched, ids, max_new_tokens=24)
    stop = full[5:9]  # a string that spans token boundaries somewhere in the greedy answer
    text, stats = generate(batched, ids, max_new_tokens=24, stop=("never appears", stop))
    assert text == full[: full.index(stop)] and stats.finish_reason == "stop" and stats.stopped_by_string


def test_cancel_frees_the_slot_and_the_others_go_on(solo, batched):
    keep_ids, drop_ids = prompt(solo, "Keep going", 120), prompt(solo, "Cancel me", 120)
    expected = generate(solo, keep_ids, max_new_tokens=120)[1].generated_ids
    kept = GenerationStats()
    keep = batched.generate(keep_ids, SamplingParams(120, temperature=0), kept)
    drop = batched.generate(drop_ids, SamplingParams(120, temperature=0), GenerationStats())
    next(keep), next(drop)
    drop.close()
    scheduler = batched.batcher.manager().batch_processor.scheduler
    deadline = time.monotonic() + 5
    while len(scheduler.active_requests) + len(scheduler.waiting_requests) > 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(scheduler.active_requests) + len(scheduler.waiting_requests) == 1
    for _ in keep:
        pass
    assert_same_or_near_tie(solo, keep_ids, expected, kept.generated_ids)


def two_turns(engine: Engine) -> tuple[list[dict], list[int]]:
    """Turn 1 through the engine, remembered; returns the turn-2 history and prompt ids."""
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Remember 42."}]
    ids = engine.encode_chat(history, 24, conversation="c1")
    answer, stats = generate(engine, ids)
    engine.remember_turn("c1", history, answer, ids, stats)
    history = history + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Which number?"}]
    return history, engine.encode_chat(history, 24, conversation="c1")


def test_turn_two_extends_the_ids_the_model_saw_in_turn_one(batched):
    history, ids = two_turns(batched)
    assert batched.turns.hits == 1
    first_turn = batched.turns.get("c1", history[:-1])
    assert first_turn is not None and ids[: len(first_turn.ids)] == list(first_turn.ids)
    assert batched.tokenizer.decode(ids).endswith("<｜User｜>Which number?<｜Assistant｜>")
    # A history edited since (another answer) is not extended.
    edited = history[:2] + [{"role": "assistant", "content": "something else"}] + history[3:]
    assert batched.encode_chat(edited, 24, conversation="c1") == batched.encode_chat(edited, 24)


def test_output_with_kv_reuse_equals_output_without(loaded, spec, batched):
    _, ids = two_turns(batched)
    reused = generate(batched, ids)[1].generated_ids  # turn 1's blocks are in the paged cache
    fresh_engine = Engine(loaded, spec, BatchConfig(page_size=16, num_blocks=512, max_batch_tokens=512))
    try:
        recomputed = generate(fresh_engine, ids)[1].generated_ids
    finally:
        fresh_engine.batcher.stop()
    assert reused == recomputed


def test_a_small_kv_budget_evicts_and_still_answers_the_same(loaded, spec, solo):
    # 16 blocks of 16 tokens: eight answers of ~60 tokens each need twice that, so cached
    # blocks of earlier requests must be evicted along the way.
    tiny = Engine(loaded, spec, BatchConfig(page_size=16, num_blocks=16, max_batch_tokens=128))
    try:
        ids = [prompt(solo, p, 48) for p in PROMPTS]
        for i in ids:
            generate(tiny, i, max_new_tokens=48)
        _, expected = generate(solo, ids[0], max_new_tokens=48)
        _, again = generate(tiny, ids[0], max_new_tokens=48)
        assert again.generated_ids == expected.generated_ids
    finally:
        tiny.batcher.stop()


def test_the_turn_cache_evicts_the_least_recently_used_first():
    cache = TurnCache(max_tokens=10)
    cache.put("a", [{"role": "user", "content": "a"}], [1, 2, 3, 4])
    cache.put("b", [{"role": "user", "content": "b"}], [1, 2, 3, 4])
    assert cache.get("a", [{"role": "user", "content": "a"}]) is not None  # a is now the most recent
    cache.put("c", [{"role": "user", "content": "c"}], [1, 2, 3, 4])
    assert cache.get("b", [{"role": "user", "content": "b"}]) is None
    assert cache.get("a", [{"role": "user", "content": "a"}]) is not None and len(cache) == 2


def test_reasoning_models_do_not_feed_earlier_thinking_back(loaded, spec):
    import dataclasses

    thinker = Engine(loaded, dataclasses.replace(spec, reasoning=True))
    history = [{"role": "user", "content": "Q1"}]
    ids = thinker.encode_chat(history, 24, conversation="r")
    assert thinker.tokenizer.decode(ids).endswith("<｜Assistant｜><think>\n")
    stats = GenerationStats(generated_ids=[5, 6, 7])
    thinker.remember_turn("r", history, "answer", ids, stats)
    assert len(thinker.turns) == 0
    follow = history + [{"role": "assistant", "content": "<think>\nsecret</think>\n\nanswer"},
                        {"role": "user", "content": "Q2"}]
    assert "secret" not in thinker.tokenizer.decode(thinker.encode_chat(follow, 24, conversation="r"))
