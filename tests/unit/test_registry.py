"""The model registry: entries from settings are validated with messages that name the problem."""
import pytest

from chat.core.served_models import all_models, default_model, get_model
from inference.registry import ModelConfigError, UnknownModel, parse_models


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


UPSTREAM = {"name": "deepseek-v3", "backend": "openai-compatible", "base_url": "http://10.0.0.5:8000/v1"}


def test_it_parses_an_upstream_entry_without_a_path():
    [spec] = parse_models([{**UPSTREAM, "api_key_env": "DEEPSEEK_UPSTREAM_KEY", "upstream_model": "deepseek-chat",
                            "timeout": 30}])
    assert spec.upstream and spec.path == ""
    assert (spec.base_url, spec.api_key_env, spec.upstream_model, spec.timeout) == (
        "http://10.0.0.5:8000/v1", "DEEPSEEK_UPSTREAM_KEY", "deepseek-chat", 30)
    assert spec.celery_queue == "model.deepseek-v3" and spec.extra == {}


def test_an_upstream_entry_has_defaults():
    [spec] = parse_models([UPSTREAM])
    assert (spec.api_key_env, spec.upstream_model, spec.timeout) == ("", "", 600)


def test_the_backend_defaults_to_local():
    [spec] = parse_models([{"name": "m", "path": "/x"}])
    assert spec.backend == "local" and not spec.upstream


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"backend": "ollama"}, "backend must be one of local, openai-compatible"),
        ({"base_url": None}, "base_url is required"),
        ({"base_url": ""}, "base_url is required"),
        ({"base_url": "ftp://10.0.0.5/v1"}, "http:// or https://"),
        ({"base_url": "10.0.0.5:8000/v1"}, "http:// or https://"),
        ({"base_url": "http:///v1"}, "with a host"),
        ({"base_url": "http://[::1/v1"}, "not a valid URL"),
        ({"base_url": "https://api.example.com/v1?key=1"}, "query"),
        ({"base_url": "https://user:sk-abc@api.example.com/v1"}, "credentials"),
        ({"api_key_env": "sk-0123456789abcdef"}, "name of an environment variable"),
        ({"api_key_env": 7}, "api_key_env"),
        ({"upstream_model": ""}, "upstream_model"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "600"}, "timeout"),
        ({"path": 3}, "path must be a string"),
    ],
)
def test_it_rejects_a_malformed_upstream_entry(entry, message):
    with pytest.raises(ModelConfigError, match=message) as refused:
        parse_models([{**UPSTREAM, **entry}])
    assert "sk-" not in str(refused.value)  # a key pasted in the wrong place is not repeated in the log


def test_it_rejects_upstream_settings_on_a_local_entry():
    with pytest.raises(ModelConfigError, match=r"DEEPSEEK_MODELS\[0\]\.base_url applies only to .*openai-compatible"):
        parse_models([{"name": "m", "path": "/x", "base_url": "http://10.0.0.5:8000/v1"}])


def test_a_local_entry_still_needs_a_path():
    with pytest.raises(ModelConfigError, match="path is required"):
        parse_models([{"name": "m", "backend": "local"}])


def test_the_default_settings_serve_the_demo_model():
    assert default_model().demo is True and default_model().name == "deepseek-chat"
    assert list(all_models()) == ["deepseek-chat", "deepseek-vl"]
    assert all_models()["deepseek-vl"].vision and not default_model().vision
    with pytest.raises(UnknownModel):
        get_model("gpt-4")
