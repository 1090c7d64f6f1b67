"""Loading a configured model once per process: tokenizer, weights, optional bitsandbytes quantization."""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.registry import ModelSpec
from inference.vision import VISION_SKIP_MODULES

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded (missing path, no hub access, unsupported quantization)."""


@dataclass
class LoadedModel:
    spec: ModelSpec
    tokenizer: Any
    model: Any
    device: str
    load_seconds: float
    processor: Any = None  # vision models: the image processor + tokenizer pair


def _unpackable_on_this_cpu(spec: ModelSpec) -> list[str]:
    """Linear layers bitsandbytes cannot run in 4-bit on this CPU, by name.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit weights for its fast kernel at the
    first forward pass: in blocks of 32 output rows (it asserts `N must be divisible by block_n`),
    with one scale per 64 inputs (a reshape that fails otherwise). Layers whose shape does not divide
    stay in bf16 instead; every other layer is quantized."""
    import torch
    from accelerate import init_empty_weights
    from bitsandbytes.functional import has_avx512bf16
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    if spec.quantization != "4bit" or torch.cuda.is_available() or not has_avx512bf16():
        return []
    auto_class = AutoModelForImageTextToText if spec.vision else AutoModelForCausalLM
    with init_empty_weights():
        skeleton = auto_class.from_config(AutoConfig.from_pretrained(spec.path))
    names = sorted({name.rsplit(".", 1)[-1] for name, module in skeleton.named_modules()
                    if isinstance(module, torch.nn.Linear) and (module.out_features % 32 or module.in_features % 64)})
    if names:
        log.warning("model %s: layers %s stay bf16 (bitsandbytes' AVX512-BF16 4-bit kernel needs rows in "
                    "multiples of 32 and inputs in multiples of 64)", spec.name, ", ".join(names))
    return names


def _quantization_config(spec: ModelSpec):
    import torch
    from transformers import BitsAndBytesConfig


    unpackable = _unpackable_on_this_cpu(spec)
    # Naming any module replaces transformers' own default (the output head), so name it too.
    skip_names = (VISION_SKIP_MODULES if spec.vision else ["lm_head"] if unpackable else []) + unpackable
    skip = {"llm_int8_skip_modules": skip_names} if skip_names else {}
    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, **skip)
    if spec.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, **skip
        )
    return None


def compute_dtype(spec: ModelSpec, device: str) -> Any:
    """bitsandbytes computes in bf16 (fp32 + 8-bit ran 25× slower); unquantized follows `dtype`."""
    import torch

    if spec.quantization != "none":
        return torch.bfloat16
    if spec.dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, spec.dtype)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load tokenizer and weights (bf16 compute; 8bit/4bit through bitsandbytes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    started = time.monotonic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log.info("loading model %s from %s (quantization=%s, dtype=%s, device=%s)", spec.name, spec.path,
             spec.quantization, str(compute_dtype(spec, device)).removeprefix("torch."), device)
    try:
        if spec.path.startswith((os.sep, ".", "~")) and not Path(spec.path).expanduser().is_dir():
            raise ModelLoadError("there is no model folder at that path")
        processor = AutoProcessor.from_pretrained(spec.path) if spec.vision else None
        tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(spec.path)
        if not (getattr(tokenizer, "chat_template", None) or getattr(processor, "chat_template", None)):
            raise ModelLoadError("its tokenizer has no chat template")
        kwargs: dict[str, Any] = {"dtype": compute_dtype(spec, device)}
        quantization = _quantization_config(spec)
        if quantization is not None:
            kwargs["quantization_config"] = quantization
        if device == "cuda":
            kwargs["device_map"] = "auto"
        auto_class = AutoModelForImageTextToText if spec.vision else AutoModelForCausalLM
        model = auto_class.from_pretrained(spec.path, **kwargs)
    except ModelLoadError as exc:
        raise ModelLoadError(f"model {spec.name!r} from {spec.path!r} cannot be served: {exc}") from None
    except Exception as exc:  # transformers raises many types for "not there / not supported"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"model {spec.name!r} failed to load from {spec.path!r}: {first_line}") from exc
    model.eval()
    elapsed = time.monotonic() - started
    params = sum(p.numel() for p in model.parameters())
    log.info("loaded model %s: %.1fM parameters in %.1f s", spec.name, params / 1e6, elapsed)
    return LoadedModel(spec, tokenizer, model, device, elapsed, processor)


class ModelCache:
    """One loaded model per name per process; a failed load is remembered for a while."""

    RETRY_FAILED_AFTER = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedModel] = {}  # by path and quantization
        self._failed: dict[str, tuple[float, ModelLoadError]] = {}

    def get(self, spec: ModelSpec) -> LoadedModel:
        key = f"{spec.path}|{spec.quantization}"  # two names for the same weights share them
        with self._lock:  # one load at a time; other threads wait instead of loading twice
            if key in self._loaded:
                return self._loaded[key]
            failed = self._failed.get(key)
            if failed and time.monotonic() - failed[0] < self.RETRY_FAILED_AFTER:
                raise failed[1]
            try:
                loaded = load_model(spec)
            except ModelLoadError as exc:
                log.error("%s", exc)
                self._failed[key] = (time.monotonic(), exc)
                raise
            self._loaded[key] = loaded
            self._failed.pop(key, None)
            return loaded
