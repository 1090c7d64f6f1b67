"""The model registry: entries from settings are validated with messages that name the problem."""
import pytest

from inference.registry import ModelConfigError, UnknownModel, all_models, default_model, get_model, parse_models


def test_it_parses_a_full_entry():
    [spec] = parse_models([{"name": "deepseek-r1", "path": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                            "quantization": "4bit", "reasoning": True, "max_context": 8192, "queue": "gpu0"}])
    assert spec.quantization == "4bit" and spec.reasoning and spec.celery_queue == "gpu0"


def test_the_queue_defaults_to_one_per_model():
    [spec] = parse_models([{"name": "m", "path": "/x"}])
    assert spec.celery_queue == "model.m"


@pytest.mark.parametrize(
    "entries, message",
    [
        ([], "non-empty"),
        ([{"path": "/x"}], "name"),
        ([{"name": "m"}], "path"),
        ([{"name": "m", "path": "/x", "quantization": "3bit"}], "quantization"),
        ([{"name": "m", "path": "/x", "max_context": 0}], "max_context"),
        ([{"name": "m", "path": "/x", "max_context": 100, "max_new_tokens": 100}], "max_new_tokens"),
        ([{"name": "m", "path": "/x", "vision": "yes"}], "vision"),
        ([{"name": "bad name", "path": "/x"}], "name"),
        ([{"name": "m", "path": "/x", "temperature": 3}], "temperature"),
        ([{"name": "m", "path": "/x", "dtype": "int3"}], "dtype"),
        ([{"name": "m", "path": "/x", "top_p": 0}], "top_p"),
        ([{"name": "m", "path": "/x"}, {"name": "m", "path": "/y"}], "same name"),
    ],
)
def test_it_rejects_a_malformed_entry(entries, message):
    with pytest.raises(ModelConfigError, match=message):
        parse_models(entries)


def test_the_default_settings_serve_the_demo_model():
    assert default_model().demo is True and default_model().name == "deepseek-chat"
    assert list(all_models()) == ["deepseek-chat", "deepseek-vl"]
    assert all_models()["deepseek-vl"].vision and not default_model().vision
    with pytest.raises(UnknownModel):
        get_model("gpt-4")
