"""Moderation: rules match normalized English and Chinese, streams are cut, and the pipeline follows the admin."""
from __future__ import annotations

import logging
import random
import types
from pathlib import Path

import pytest
from django.db import DatabaseError

from chat.moderation import classifier as moderation_classifier
from chat.moderation import moderator as moderation
from chat.moderation.classifier import Classifier
from chat.moderation.defaults import DEFAULT_RULES
from chat.moderation.models import ModerationRule
from chat.moderation.moderator import Moderator, current_moderator
from chat.moderation.normalize import normalize
from chat.moderation.output_watch import MAX_PENDING, OutputWatch
from chat.moderation.rules import (
    ALLOWED,
    APPLIES_TO,
    REGEX_SPAN,
    WINDOW,
    Rule,
    RuleSet,
    Verdict,
    pattern_error,
)


def keyword(pattern: str, applies_to: str = "both", rule_id: str = "test:1", category: str = "test") -> Rule:
    return Rule(rule_id, "keyword", pattern, category, applies_to)


def regex(pattern: str, applies_to: str = "both", rule_id: str = "test:1", category: str = "test") -> Rule:
    return Rule(rule_id, "regex", pattern, category, applies_to)


def blocks(rules: list[Rule], text: str, direction: str = "input") -> bool:
    return not RuleSet(rules, direction).check(text).allowed


def stream(watch: OutputWatch, deltas: list[str]) -> list[bool]:
    """Which deltas the watch said were blocked."""
    return [not watch.feed(delta).allowed for delta in deltas]


@pytest.fixture
def defaults() -> Moderator:
    return Moderator(DEFAULT_RULES)


# Normalization


def test_normalizing_turns_full_width_and_capitals_into_plain_lower_case():
    assert normalize("ｋｉｌｌ") == "kill"
    assert normalize("KILL") == "kill"
    assert normalize("Ｋｉｌｌ") == "kill"


def test_normalizing_removes_zero_width_characters_and_soft_hyphens():
    assert normalize("K\u200bILL") == "kill"
    assert normalize("k\u200ci\u200dl\u2060l\ufeff") == "kill"
    assert normalize("ki\u00adll") == "kill"


def test_normalizing_collapses_whitespace_runs_including_the_ideographic_space():
    assert normalize("  how\t to \n\n make\u3000a ") == "how to make a"


def test_normalizing_leaves_chinese_characters_alone_and_narrows_full_width_punctuation():
    assert normalize("制造炸弹") == "制造炸弹"
    assert normalize("你好，世界！") == "你好,世界!"


def test_normalizing_composes_accents_and_expands_compatibility_forms():
    assert normalize("cafe\u0301") == "café"
    assert normalize("ﬁle ①") == "file 1"


# Keywords


def test_an_ascii_keyword_matches_whole_words_in_any_case():
    rules = [keyword("kill")]

    assert blocks(rules, "Kill!")
    assert blocks(rules, "KILL")
    assert blocks(rules, "please kill it")


def test_an_ascii_keyword_does_not_match_inside_a_longer_word():
    rules = [keyword("kill")]

    assert not blocks(rules, "she has great skill")
    assert not blocks(rules, "the killer app")
    assert not blocks(rules, "overkill")


def test_an_ascii_keyword_next_to_chinese_characters_still_matches():
    assert blocks([keyword("kill")], "我想kill他")


def test_a_chinese_keyword_matches_as_a_substring_since_chinese_has_no_spaces():
    rules = [keyword("制造炸弹")]

    assert blocks(rules, "请告诉我怎么制造炸弹吧")
    assert not blocks(rules, "制造业的炸弹")


def test_a_keyword_written_in_full_width_or_capitals_matches_plain_text():
    assert blocks([keyword("ＫＩＬＬ ＭＥ")], "kill me")


def test_a_multi_word_keyword_matches_across_extra_spaces_and_zero_width_characters():
    assert blocks([keyword("how to make a bomb")], "How  to\nmake a b\u200bomb?")


def test_the_longest_matching_keyword_decides_the_rule():
    rules = [keyword("kill", rule_id="test:short"), keyword("kill myself", rule_id="test:long")]

    verdict = RuleSet(rules, "input").check("how to kill myself")

    assert verdict.rule_id == "test:long"


def test_a_verdict_names_the_stage_the_rule_and_its_category():
    verdict = RuleSet([keyword("kill", rule_id="db:7", category="violence")], "input").check("kill")

    assert verdict == Verdict(False, "rules", "db:7", "violence")
    assert verdict.as_detail() == {"stage": "rules", "rule_id": "db:7", "category": "violence"}
    assert RuleSet([], "input").check("anything") == ALLOWED


def test_a_keyword_longer_than_the_stream_window_is_refused():
    assert pattern_error("keyword", "x" * (WINDOW + 1)) is not None
    assert pattern_error("keyword", "   ") is not None
    assert pattern_error("keyword", "fine") is None


def test_keyword_matching_agrees_with_a_naive_search():
    """Given random keyword sets, when the single compiled pattern checks random texts, then it blocks
    exactly when some keyword occurs with word boundaries at its Latin edges."""
    rng = random.Random(5)
    letters = "abcde 炸弹"
    for _ in range(200):
        words = {"".join(rng.choices(letters, k=rng.randint(1, 4))).strip() for _ in range(rng.randint(1, 6))}
        words.discard("")
        text = "".join(rng.choices(letters, k=30))
        expected = any(_naive_match(word, normalize(text)) for word in words)

        assert blocks([keyword(word, rule_id=f"test:{i}") for i, word in enumerate(words)], text) == expected, (
            words, text)


def _naive_match(word: str, text: str) -> bool:
    for start in range(len(text) - len(word) + 1):
        if text[start : start + len(word)] != word:
            continue
        before, after = text[start - 1 : start] if start else "", text[start + len(word) : start + len(word) + 1]
        if word[0].isascii() and word[0].isalnum() and before.isascii() and before.isalnum():
            continue
        if word[-1].isascii() and word[-1].isalnum() and after.isascii() and after.isalnum():
            continue
        return True
    return False


# Regular expressions


def test_a_regex_rule_matches_case_insensitively_on_normalized_text():
    rules = [regex(r"password\s*=\s*\S+")]

    assert blocks(rules, "PASSWORD = hunter2")
    assert blocks(rules, "ｐａｓｓｗｏｒｄ＝hunter2")
    assert not blocks(rules, "the password is secret")


def test_a_regex_written_with_capitals_or_full_width_letters_matches_too():
    assert blocks([regex(r"AKIA[0-9A-Z]{4}")], "key akia1b2c")
    assert blocks([regex(r"ｂｏｍｂ\d+")], "BOMB42")


def test_full_width_brackets_in_a_regex_stay_literal():
    assert blocks([regex(r"（secret）")], "a (secret) here")
    assert not blocks([regex(r"x｛３｝")], "xxx")


def test_an_invalid_regex_is_skipped_with_a_warning_and_the_other_rules_still_apply(caplog):
    rules = [regex(r"(unclosed", rule_id="db:1"), keyword("kill", rule_id="db:2")]

    with caplog.at_level(logging.WARNING, logger="chat.moderation.rules"):
        rule_set = RuleSet(rules, "input")

    assert "db:1" in caplog.text
    assert rule_set.check("kill").rule_id == "db:2"
    assert rule_set.check("(unclosed").allowed


def test_a_regex_with_nested_repetition_is_refused_unless_possessive_or_atomic():
    assert pattern_error("regex", r"(a+)+$") is not None
    assert pattern_error("regex", r"(?:\w+\s?)*end") is not None
    assert pattern_error("regex", r"(a++)+$") is None
    assert pattern_error("regex", r"(?>\w+\s?)*end") is None
    assert pattern_error("regex", r"(\d{1,3}\.){3}\d{1,3}") is None


def test_a_regex_that_matches_empty_text_is_refused_rather_than_blocking_everything():
    assert pattern_error("regex", r"a*") is not None
    assert not blocks([regex(r"a*")], "hello")


def test_a_regex_match_across_the_boundary_of_two_scan_spans_is_found():
    text = "x " * (REGEX_SPAN // 2 - 3) + "secret-token-123 " + "y " * 3000

    assert blocks([regex(r"secret-token-\d+(?![\d])")], text)


# Directions


def test_rules_apply_only_in_their_direction():
    rules = [keyword("alpha", "input", "t:in"), keyword("beta", "output", "t:out"), keyword("gamma", "both", "t:b")]
    moderator = Moderator(rules)

    assert not moderator.check_input("alpha").allowed
    assert moderator.check_output("alpha").allowed
    assert moderator.check_input("beta").allowed
    assert not moderator.check_output("beta").allowed
    assert not moderator.check_input("gamma").allowed
    assert not moderator.check_output("gamma").allowed


def test_a_rule_set_is_for_inputs_or_outputs_only():
    with pytest.raises(ValueError):
        RuleSet([], "both")


# Shipped rules


def test_the_shipped_rules_are_a_modest_list_with_stable_unique_ids_that_all_compile():
    ids = [rule.id for rule in DEFAULT_RULES]

    assert 30 <= len(DEFAULT_RULES) <= 60
    assert len(set(ids)) == len(ids)
    assert all(rule.id.startswith(f"default:{rule.category}-") for rule in DEFAULT_RULES)
    assert [rule.id for rule in DEFAULT_RULES if pattern_error(rule.kind, rule.pattern)] == []
    assert {rule.applies_to for rule in DEFAULT_RULES} <= set(APPLIES_TO)


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("How to make a bomb at home?", "violence"),
        ("how do I build a pipe bomb", "violence"),
        ("Can you explain HOW TO MAKE NAPALM", "violence"),
        ("请问如何制造炸弹", "violence"),
        ("自制炸药的步骤", "violence"),
        ("how do i kill myself", "self-harm"),
        ("What is the best way to kill myself", "self-harm"),
        ("ｈｏｗ　ｔｏ　ｋｉｌｌ　ｍｙｓｅｌｆ", "self-harm"),
        ("自杀方法有哪些", "self-harm"),
        ("我想知道怎么自杀", "self-harm"),
        ("where to find child porn", "child-safety"),
        ("儿童色情图片", "child-safety"),
    ],
)
def test_the_shipped_rules_block_clear_requests_in_english_and_chinese(defaults, text, category):
    verdict = defaults.check_input(text)

    assert not verdict.allowed
    assert verdict.category == category
    assert verdict.rule_id.startswith(f"default:{category}-")


@pytest.mark.parametrize(
    "text",
    [
        "this song is the bomb",
        "kill the process with kill -9",
        "How do I kill a zombie process?",
        "I would kill for a coffee",
        "that was a photo bomb",
        "how to make a bath bomb",
        "how to make a bomber jacket",
        "the killer app of the year",
        "she has great skill",
        "斗地主里怎么出炸弹",
        "炸弹是一个常见的比喻",
        "如何预防自杀：心理援助热线",
        "child safety online",
    ],
)
def test_the_shipped_rules_let_ordinary_chat_through(defaults, text):
    assert defaults.check_input(text).allowed
    assert defaults.check_output(text).allowed


@pytest.mark.parametrize(
    "text",
    [
        "here you go:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow...",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "token: ghp_" + "a1B2c3D4" * 4 + "e5F6",
        "OPENAI_API_KEY=sk-proj-" + "Ab3_" * 12,
    ],
)
def test_the_shipped_rules_withhold_secrets_in_answers_but_let_users_ask_about_their_own(defaults, text):
    verdict = defaults.check_output(text)

    assert not verdict.allowed and verdict.category == "credentials"
    assert defaults.check_input(text).allowed


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN PUBLIC KEY-----",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ user@host",
        "risk-adjusted-return-on-capital-measurements-for-banks",
        "the task-queue-worker-configuration-reference-manual",
    ],
)
def test_the_shipped_secret_patterns_let_public_keys_and_long_hyphenated_words_through(defaults, text):
    assert defaults.check_output(text).allowed


# Streamed answers


def test_a_keyword_split_across_deltas_is_caught_once_the_word_has_ended():
    watch = Moderator([keyword("kill")]).output_watch()

    assert stream(watch, ["I will ki", "ll", " it"]) == [False, False, True]
    assert watch.verdict.rule_id == "test:1"


def test_a_keyword_at_the_very_end_of_the_answer_is_caught_by_finish():
    watch = Moderator([keyword("kill")]).output_watch()

    stream(watch, ["ki", "ll"])

    assert not watch.finish().allowed


def test_a_word_that_only_starts_like_a_keyword_is_not_cut(defaults):
    watch = defaults.output_watch()

    assert stream(watch, ["Here is how to make a bo", "mb", "er jacket: cut the fabric"]) == [False] * 3
    assert watch.finish().allowed


def test_a_chinese_keyword_split_across_deltas_is_cut_at_once():
    watch = Moderator([keyword("制造炸弹")]).output_watch()

    assert stream(watch, ["好的，制造", "炸弹"]) == [False, True]


def test_a_blocked_stream_stays_blocked():
    watch = Moderator([keyword("kill")]).output_watch()
    stream(watch, ["kill", " "])

    later = stream(watch, ["harmless text", " more"])

    assert later == [True, True]
    assert watch.blocked and not watch.finish().allowed


def test_text_split_inside_an_accent_or_whitespace_run_or_zero_width_characters_still_matches():
    assert stream(Moderator([keyword("café au lait")]).output_watch(), ["caf", "e", "\u0301 au", " lait."])[-1]
    assert stream(Moderator([keyword("how to make")]).output_watch(), ["how to ", "\n make", "!"])[-1]
    assert stream(Moderator([keyword("kill me")]).output_watch(), ["ki\u200b", "\u200bll m", "e."])[-1]


def test_streaming_agrees_with_checking_the_whole_answer():
    """Given answers cut into random deltas, when they are streamed, then the watch blocks exactly
    when checking the whole answer at once does."""
    rng = random.Random(11)
    rules = [keyword("kill me"), keyword("制造炸弹", rule_id="test:2"), regex(r"key-\d{3}", rule_id="test:3")]
    moderator = Moderator(rules)
    pieces = ["kill", " me", "ki", "ll ", "制造", "炸弹", "key-", "12", "3 ", "e\u0301", "\u200b", "  ", "skill", "x"]
    for _ in range(300):
        answer = "".join(rng.choices(pieces, k=rng.randint(1, 12)))
        cuts = sorted(rng.sample(range(1, len(answer)), min(len(answer) - 1, rng.randint(0, 6))))
        deltas = [answer[a:b] for a, b in zip([0, *cuts], [*cuts, len(answer)], strict=True)]
        watch = moderator.output_watch()
        stream(watch, deltas)

        assert watch.finish().allowed == moderator.check_output(answer).allowed, deltas


def test_streaming_scans_each_delta_plus_a_bounded_window_not_the_whole_answer():
    """Given a 100 KB answer in small deltas, when it streams, then each delta costs its own length plus
    at most the window, and a keyword at the very end is still caught."""
    rng = random.Random(3)
    moderator = Moderator([*DEFAULT_RULES, keyword("forbidden phrase")])
    watch = moderator.output_watch()
    answer = "".join(rng.choice(["lorem ", "ipsum ", "dolor ", "你好，", "世界。", "e\u0301 "]) for _ in range(20_000))
    answer = answer[:100_000]
    position = feeds = 0

    while position < len(answer):
        delta = answer[position : position + rng.randint(1, 12)]
        position += len(delta)
        feeds += 1
        before = watch.scanned
        assert watch.feed(delta).allowed
        assert watch.scanned - before <= len(delta) + WINDOW + MAX_PENDING
    stream(watch, [" forbidden", " phrase"])

    assert watch.scanned <= len(answer) + feeds * (WINDOW + MAX_PENDING)
    assert not watch.finish().allowed


def test_an_output_watch_with_no_output_rules_keeps_nothing_and_allows_everything():
    watch = Moderator([keyword("kill", "input")]).output_watch()

    assert stream(watch, ["kill", " kill"]) == [False, False]
    assert watch.finish().allowed and watch.scanned == 0


# Classifier


def _tiny_classifier(folder: Path, bias: tuple[float, float]) -> str:
    """A random-weight BERT with labels ok/toxic whose head always answers by its bias; no network."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "you", "are", "nice"]
    raw = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="[UNK]"))
    raw.normalizer = normalizers.Lowercase()
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", model_max_length=32)
    config = BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=32, id2label={0: "ok", 1: "toxic"},
                        label2id={"ok": 0, "toxic": 1})
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def toxic_model(tmp_path_factory) -> str:
    return _tiny_classifier(tmp_path_factory.mktemp("toxic"), (0.0, 10.0))


@pytest.fixture(scope="module")
def harmless_model(tmp_path_factory) -> str:
    return _tiny_classifier(tmp_path_factory.mktemp("harmless"), (10.0, 0.0))


def test_the_classifier_is_off_unless_a_model_path_is_configured(settings):
    settings.MODERATION_CLASSIFIER_PATH = ""

    assert Classifier.from_settings() is None


def test_the_classifier_settings_name_the_model_labels_and_threshold(settings):
    settings.MODERATION_CLASSIFIER_PATH = "/models/guard"
    settings.MODERATION_CLASSIFIER_BLOCK_LABELS = ["toxic", "hate"]
    settings.MODERATION_CLASSIFIER_THRESHOLD = 0.9

    assert Classifier.from_settings() == Classifier("/models/guard", ("toxic", "hate"), 0.9)


def test_the_classifier_blocks_an_input_its_model_calls_toxic(toxic_model):
    verdict = Moderator([], Classifier(toxic_model)).check_input("hello you are nice")

    assert not verdict.allowed
    assert (verdict.stage, verdict.rule_id, verdict.category) == ("classifier", "classifier:toxic", "toxic")
    assert verdict.score > 0.99 and verdict.as_detail()["score"] > 0.99


def test_the_classifier_allows_what_its_model_calls_ok(harmless_model):
    assert Moderator([], Classifier(harmless_model)).check_input("hello world").allowed


def test_the_classifier_allows_a_label_under_the_threshold_or_not_in_the_block_list(toxic_model):
    assert Classifier(toxic_model, threshold=1.01).check("hello").allowed
    assert Classifier(toxic_model, block_labels=("hate",)).check("hello").allowed


def test_rules_run_before_the_classifier_and_outputs_are_never_classified(toxic_model):
    moderator = Moderator([keyword("kill")], Classifier(toxic_model))

    assert moderator.check_input("kill").stage == "rules"
    assert moderator.check_output("hello world").allowed
    assert stream(moderator.output_watch(), ["hello", " world"]) == [False, False]


def test_the_classifier_model_is_loaded_once_per_process(harmless_model, monkeypatch):
    import transformers

    loads = []
    real = transformers.pipeline
    monkeypatch.setattr(transformers, "pipeline", lambda *args, **kwargs: loads.append(kwargs) or real(*args, **kwargs))
    monkeypatch.setattr(moderation_classifier, "_pipelines", {})

    for _ in range(3):
        Classifier(harmless_model).check("hello")

    assert loads == [{"model": harmless_model, "device": -1}]


# The process's moderator


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(moderation, "_clock", fake)
    return fake


@pytest.fixture
def admin_rules(monkeypatch, settings) -> list[Rule]:
    """The rules "in the database", editable by the test; the cache starts and ends empty."""
    rules: list[Rule] = []
    settings.MODERATION_ENABLED = True
    settings.MODERATION_RULES_TTL = 5
    settings.MODERATION_CLASSIFIER_PATH = ""
    monkeypatch.setattr(moderation, "_db_rules", lambda: list(rules))
    moderation.invalidate()
    yield rules
    moderation.invalidate()


def test_the_moderator_combines_shipped_admin_and_settings_rules(admin_rules, settings, clock):
    admin_rules.append(keyword("alpha", rule_id="db:1"))
    settings.MODERATION_EXTRA_RULES = [{"pattern": "beta"}, {"kind": "regex", "pattern": r"gam+a", "id": "ops:g"}]

    moderator = current_moderator()

    assert moderator.check_input("how to make a bomb").rule_id == "default:violence-1"
    assert moderator.check_input("alpha").rule_id == "db:1"
    assert moderator.check_input("beta").rule_id == "settings:1"
    assert moderator.check_input("gammmma").rule_id == "ops:g"


def test_an_admin_edit_applies_once_the_rules_ttl_has_passed(admin_rules, clock):
    """Given a moderator built from the admin's rules, when staff change a rule, then the change applies
    after MODERATION_RULES_TTL seconds without a restart, and not before."""
    admin_rules.append(keyword("alpha", rule_id="db:1"))
    assert not current_moderator().check_input("alpha").allowed

    admin_rules[:] = [keyword("beta", rule_id="db:1")]
    clock.now += 4

    assert not current_moderator().check_input("alpha").allowed
    clock.now += 2
    assert current_moderator().check_input("alpha").allowed
    assert not current_moderator().check_input("beta").allowed


def test_unchanged_rules_reuse_the_compiled_moderator(admin_rules, clock):
    first = current_moderator()
    clock.now += 60

    assert current_moderator() is first


def test_invalidate_applies_an_edit_at_once_in_this_process(admin_rules, clock):
    current_moderator()
    admin_rules.append(keyword("alpha"))

    moderation.invalidate()

    assert not current_moderator().check_input("alpha").allowed


def test_when_the_database_cannot_be_read_the_last_rules_stay_in_force(admin_rules, clock, monkeypatch):
    admin_rules.append(keyword("alpha"))
    current_moderator()

    def broken() -> list[Rule]:
        raise DatabaseError("connection lost")

    monkeypatch.setattr(moderation, "_db_rules", broken)
    clock.now += 60

    assert not current_moderator().check_input("alpha").allowed


def test_a_disabled_moderator_allows_everything(admin_rules, settings, clock):
    admin_rules.append(keyword("alpha"))
    settings.MODERATION_ENABLED = False

    moderator = current_moderator()

    assert moderator.check_input("how to make a bomb").allowed
    assert moderator.check_input("alpha").allowed
    assert stream(moderator.output_watch(), ["-----BEGIN RSA PRIVATE KEY-----", "\n"]) == [False, False]


def test_the_shipped_rules_can_be_turned_off_in_settings(admin_rules, settings, clock):
    settings.MODERATION_DEFAULT_RULES = False

    assert current_moderator().check_input("how to make a bomb").allowed


def test_a_configured_classifier_joins_the_process_moderator(admin_rules, settings, clock, toxic_model):
    settings.MODERATION_CLASSIFIER_PATH = toxic_model

    assert current_moderator().check_input("hello").stage == "classifier"


def test_a_settings_rule_without_a_pattern_is_skipped(admin_rules, settings, clock, caplog):
    settings.MODERATION_EXTRA_RULES = [{"kind": "keyword"}, {"pattern": "beta"}]

    with caplog.at_level(logging.WARNING, logger="chat.moderation.moderator"):
        moderator = current_moderator()

    assert "entry 1" in caplog.text
    assert moderator.check_input("beta").rule_id == "settings:2"


def test_an_admin_row_becomes_a_rule_with_a_db_id():
    row = types.SimpleNamespace(pk=42, kind="regex", pattern="x+y", category="custom", applies_to="output")

    assert moderation.rule_from_model(row) == Rule("db:42", "regex", "x+y", "custom", "output")


@pytest.mark.django_db
def test_enabled_rules_saved_in_the_admin_apply_without_a_restart(settings, clock):
    """Given the admin's rule table, when staff add an enabled and a disabled rule, then only the enabled
    one blocks, once the TTL has passed."""
    settings.MODERATION_ENABLED = True
    settings.MODERATION_RULES_TTL = 5
    moderation.invalidate()
    assert current_moderator().check_input("zebra crossing").allowed

    on = ModerationRule.objects.create(kind="keyword", pattern="zebra", category="custom", applies_to="input")
    ModerationRule.objects.create(kind="keyword", pattern="crossing", category="custom", enabled=False)
    clock.now += 6
    verdict = current_moderator().check_input("zebra crossing")

    assert verdict.rule_id == f"db:{on.pk}"
    assert current_moderator().check_input("crossing").allowed
    moderation.invalidate()
