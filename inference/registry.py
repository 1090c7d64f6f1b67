"""Model specs: what an operator configures per model, parsed and validated (from chat.core.served_models)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

QUANTIZATIONS = ("none", "8bit", "4bit")
LOCAL, OPENAI_COMPATIBLE = "local", "openai-compatible"
BACKENDS = (LOCAL, OPENAI_COMPATIBLE)
DTYPES = ("auto", "bfloat16", "float16", "float32")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UPSTREAM_ONLY = ("base_url", "api_key_env", "upstream_model", "timeout")


class ModelConfigError(ValueError):
    """A model entry in settings is malformed."""


class UnknownModel(LookupError):
    """No configured model has this name."""


@dataclass(frozen=True)
class ModelSpec:
    """One servable model, as an operator names it in settings."""

    name: str  # public name shown in the UI and API ("deepseek-chat")
    path: str = ""  # Hugging Face id or local folder (local backend only)
    quantization: str = "none"  # none | 8bit | 4bit (bitsandbytes, bf16 compute)
    # Weights/compute dtype when not quantized. auto: bfloat16 on a GPU; float32 on a CPU, where
    # bf16 matmuls without hardware support measured 4× slower prefill and 1.5× less batch throughput.
    dtype: str = "auto"
    max_context: int = 4096  # prompt + answer tokens the model may see
    max_new_tokens: int = 1024  # default answer length cap
    reasoning: bool = False  # emits <think>…</think> before the answer
    vision: bool = False  # accepts images
    queue: str = ""  # Celery queue its workers consume (defaults to "model.<name>")
    demo: bool = False  # random-weight demo model: the UI says its text is noise
    temperature: float = 0.7
    top_p: float = 0.95
    # Where answers come from: "local" loads `path` in the worker; "openai-compatible" relays
    # to another server's /chat/completions (vLLM, llama.cpp, a hosted API) and loads nothing.
    backend: str = LOCAL
    base_url: str = ""  # the upstream's API root, e.g. "http://10.0.0.5:8000/v1"
    # The NAME of an environment variable holding the upstream's key: read at request time, so
    # the key itself never sits in settings (or in this object's repr, or a log line).
    api_key_env: str = ""
    upstream_model: str = ""  # the model's name upstream; empty means `name`
    timeout: float = 600.0  # seconds to wait for the upstream to connect or send the next bytes
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def celery_queue(self) -> str:
        return self.queue or f"model.{self.name}"

    @property
    def upstream(self) -> bool:
        """Answers come from another server: no weights, no tokenizer in this deployment."""
        return self.backend == OPENAI_COMPATIBLE


def parse_models(raw: Any) -> list[ModelSpec]:
    """Validate the settings' list of model entries; raise ModelConfigError naming the problem."""
    if not isinstance(raw, list) or not raw:
        raise ModelConfigError("DEEPSEEK_MODELS must be a non-empty JSON list of model objects")
    known = {f.name for f in fields(ModelSpec)} - {"extra"}
    specs: list[ModelSpec] = []
    for index, entry in enumerate(raw):
        where = f"DEEPSEEK_MODELS[{index}]"
        if not isinstance(entry, dict):
            raise ModelConfigError(f"{where} must be an object")
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ModelConfigError(f"{where}.name is required and must be a string")
        if not _NAME.match(entry["name"]):
            raise ModelConfigError(f"{where}.name {entry['name']!r} may use letters, digits and ._:- only")
        _check_backend(entry, where)
        if entry.get("quantization", "none") not in QUANTIZATIONS:
            raise ModelConfigError(f"{where}.quantization must be one of {', '.join(QUANTIZATIONS)}")
        if entry.get("dtype", "auto") not in DTYPES:
            raise ModelConfigError(f"{where}.dtype must be one of {', '.join(DTYPES)}")
        for key in ("max_context", "max_new_tokens"):
            value = entry.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelConfigError(f"{where}.{key} must be a positive integer")
        for key in ("reasoning", "vision", "demo"):
            if not isinstance(entry.get(key, False), bool):
                raise ModelConfigError(f"{where}.{key} must be true or false")
        temperature, top_p = entry.get("temperature", 0.7), entry.get("top_p", 0.95)
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
            raise ModelConfigError(f"{where}.temperature must be a number from 0 to 2")
        if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
            raise ModelConfigError(f"{where}.top_p must be a number above 0 and at most 1")
        args = {k: v for k, v in entry.items() if k in known}
        spec = ModelSpec(**args, extra={k: v for k, v in entry.items() if k not in known})
        if spec.max_new_tokens >= spec.max_context:
            raise ModelConfigError(f"{where}.max_new_tokens must be below max_context")
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ModelConfigError("DEEPSEEK_MODELS has two entries with the same name")
    return specs


def _check_backend(entry: dict[str, Any], where: str) -> None:
    backend = entry.get("backend", LOCAL)
    if backend not in BACKENDS:
        raise ModelConfigError(f"{where}.backend must be one of {', '.join(BACKENDS)}")
    if backend == LOCAL:
        if not isinstance(entry.get("path"), str) or not entry["path"]:
            raise ModelConfigError(f"{where}.path is required and must be a string")
        # An upstream's settings on a local entry mean a forgotten "backend": say so, not "cannot load".
        stray = [key for key in _UPSTREAM_ONLY if key in entry]
        if stray:
            raise ModelConfigError(f"{where}.{stray[0]} applies only to \"backend\": \"{OPENAI_COMPATIBLE}\"")
        return
    if "path" in entry and not isinstance(entry["path"], str):
        raise ModelConfigError(f"{where}.path must be a string")
    base_url = entry.get("base_url")
    if not isinstance(base_url, str) or not base_url:
        raise ModelConfigError(f"{where}.base_url is required for the {backend} backend")
    try:
        parts = urlsplit(base_url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ModelConfigError(f"{where}.base_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelConfigError(f"{where}.base_url must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ModelConfigError(f"{where}.base_url must not have a query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ModelConfigError(f"{where}.base_url must not carry credentials; name them in api_key_env")
    api_key_env = entry.get("api_key_env", "")
    if not isinstance(api_key_env, str) or (api_key_env and not _ENV_NAME.match(api_key_env)):
        raise ModelConfigError(f"{where}.api_key_env must be the name of an environment variable (not the key)")
    upstream_model = entry.get("upstream_model", entry["name"])
    if not isinstance(upstream_model, str) or not upstream_model:
        raise ModelConfigError(f"{where}.upstream_model must be a non-empty string")
    timeout = entry.get("timeout", 600)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ModelConfigError(f"{where}.timeout must be a positive number of seconds")
