"""Measures GPU-sizing inputs on the bench model (bytes per parameter in bf16 / int8 / nf4, KV bytes per token)
and extrapolates them to DeepSeek-sized models: the numbers behind README's "Deploy on a GPU server" table.

    DATA_DIR=/tmp/sizing .venv/bin/python manage.py build_demo_models --bench
    DATA_DIR=/tmp/sizing .venv/bin/python docker/sizing.py

It runs on a CPU (~1 minute). bitsandbytes stores the same bytes on a CPU as on a GPU (int8 weights plus one
fp32 scale per output row; NF4 packs two weights per byte plus one fp32 absmax per 64 weights), so the bytes
per quantized weight carry over; what a GPU adds (CUDA context, allocator slack, activations) is an allowance.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the checkout

GIB = 2**30
# The engine's default paged KV cache: ENGINE_KV_BLOCKS × ENGINE_KV_PAGE_SIZE tokens, allocated when a worker
# starts (e.g. 8 conversations of 8k tokens at once, reused prefixes included).
KV_TOKENS = 2048 * 32
# CUDA context, activations for ENGINE_MAX_BATCH_TOKENS (the fp32 logits over a 150k vocabulary are the big
# part) and allocator slack. Not measured here (no GPU): a round allowance.
OVERHEAD_GIB = 2.0


@dataclass(frozen=True)
class Architecture:
    """The published config.json numbers that decide weight and KV-cache size."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    qkv_bias: bool  # Qwen2 has biases on q/k/v; Llama has none

    def linear_params(self) -> int:
        """Weights of the decoder's Linear layers: the part bitsandbytes quantizes."""
        head_dim = self.hidden // self.heads
        kv = self.kv_heads * head_dim
        attention = self.hidden * self.hidden * 2 + self.hidden * kv * 2  # q, o + k, v
        return self.layers * (attention + 3 * self.hidden * self.intermediate)  # gate, up, down

    def other_params(self) -> int:
        """What stays bf16: input embeddings, the output head (transformers skips it), norms, biases."""
        kv = self.kv_heads * (self.hidden // self.heads)
        biases = self.layers * (self.hidden + 2 * kv) if self.qkv_bias else 0
        norms = self.layers * 2 * self.hidden + self.hidden
        return 2 * self.vocab * self.hidden + biases + norms  # none of these models ties embeddings

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * (self.hidden // self.heads) * 2  # K and V, bf16


# From each model's config.json on the Hugging Face hub (DeepSeek-R1 distills; the 671B model is below).
MODELS = [
    Architecture("DeepSeek-R1-Distill-Qwen-1.5B", 1536, 28, 8960, 12, 2, 151936, True),
    Architecture("DeepSeek-R1-Distill-Qwen-7B", 3584, 28, 18944, 28, 4, 152064, True),
    Architecture("DeepSeek-R1-Distill-Qwen-14B", 5120, 48, 13824, 40, 8, 152064, True),
    Architecture("DeepSeek-R1-Distill-Qwen-32B", 5120, 64, 27648, 40, 8, 152064, True),
    Architecture("DeepSeek-R1-Distill-Llama-70B", 8192, 80, 28672, 64, 8, 128256, False),
]


@dataclass
class Measured:
    quantization: str
    total_bytes: int  # every tensor the loaded model holds, shared storage once
    footprint: int  # transformers' model.get_memory_footprint() (misses bitsandbytes' scales)
    linear_params: int  # weights in quantized (or quantizable) Linear layers
    linear_bytes: int  # their bytes, scales and absmax included
    other_params: int
    other_bytes: int


def _storage_key(tensor) -> tuple[int, int]:
    return tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()


def measure(path: str, quantization: str) -> Measured:
    """Load the model as a worker would and count the bytes of every tensor it keeps."""
    import torch

    from inference.loading import load_model
    from inference.registry import ModelSpec

    loaded = load_model(ModelSpec(name="sizing", path=path, quantization=quantization, dtype="bfloat16"))
    model = loaded.model
    seen: set[tuple[int, int]] = set()

    def once(tensor) -> int:
        key = _storage_key(tensor)
        if key in seen:
            return 0
        seen.add(key)
        return key[1]

    linear_params = linear_bytes = 0
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        is_decoder_linear = ".layers." in f".{module_name}" and isinstance(weight, torch.Tensor) and (
            isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear8bitLt", "Linear4bit"))
        if not is_decoder_linear:
            continue
        state = getattr(weight, "quant_state", None)
        shape = state.shape if state is not None else weight.shape  # NF4 stores a packed column
        linear_params += int(torch.Size(shape).numel())
        linear_bytes += once(weight)
        extras = [getattr(weight, "SCB", None)]  # int8: one fp32 scale per output row
        if state is not None:  # nf4: absmax per block (and a nested state with double quantization)
            extras += [state.absmax, state.code]
            if getattr(state, "state2", None) is not None:
                extras += [state.state2.absmax, state.state2.code]
        linear_bytes += sum(once(t) for t in extras if isinstance(t, torch.Tensor))
    other_params = other_bytes = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        size = once(tensor)
        if size:
            other_bytes += size
            other_params += tensor.numel()
    total = linear_bytes + other_bytes
    return Measured(quantization, total, model.get_memory_footprint(), linear_params, linear_bytes,
                    other_params, other_bytes)


def kv_bytes_per_token(path: str) -> float:
    """The paged KV cache's bytes per token, from two cache sizes (their difference cancels fixed parts)."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from inference.loading import load_model
    from inference.registry import ModelSpec

    model = load_model(ModelSpec(name="sizing", path=path, quantization="none", dtype="bfloat16")).model
    sizes = {}
    for blocks in (64, 128):
        manager = model.init_continuous_batching(
            generation_config=GenerationConfig(do_sample=False, max_new_tokens=2, eos_token_id=2, pad_token_id=0),
            continuous_batching_config=ContinuousBatchingConfig(page_size=32, num_blocks=blocks, max_batch_tokens=64),
        )
        manager.start()
        request = manager.add_request([5, 6, 7, 8], max_new_tokens=1)
        for result in manager.request_id_iter(request):
            if result.status.name == "FINISHED":
                break
        sizes[blocks] = manager.batch_processor.cache.cache_tensor.untyped_storage().nbytes()
        manager.stop(block=True)
    return (sizes[128] - sizes[64]) / (64 * 32)


def sizing_rows(per_weight: dict[str, float]) -> list[list[str]]:
    """Weights (quantized Linear layers at the measured bytes per weight, the rest bf16) + KV + overhead."""
    rows = []
    for arch in MODELS:
        kv_gib = arch.kv_bytes_per_token() * KV_TOKENS / GIB
        row = [arch.name, f"{(arch.linear_params() + arch.other_params()) / 1e9:.1f}B",
               f"{arch.kv_bytes_per_token() // 1024} KiB / {kv_gib:.1f}"]
        for quantization in ("none", "8bit", "4bit"):
            weights = (arch.linear_params() * per_weight[quantization] + arch.other_params() * 2) / GIB
            row.append(f"{weights:.1f} → {weights + kv_gib + OVERHEAD_GIB:.0f}")
        rows.append(row)
    return rows


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")
    data_dir = Path(os.environ.get("DATA_DIR", Path(__file__).resolve().parent.parent / "var"))
    path = str(data_dir / "models" / "bench-100m")
    if not Path(path).is_dir():
        print(f"no bench model at {path}: run `manage.py build_demo_models --bench` with the same DATA_DIR first")
        return 2
    results = [measure(path, q) for q in ("none", "8bit", "4bit")]
    params = results[0].linear_params + results[0].other_params
    print(f"Measured on this machine (CPU, bench-100m: {params / 1e6:.1f}M parameters, "
          f"{results[0].linear_params / 1e6:.1f}M of them in decoder Linear layers):")
    print(f"{'':6} {'all tensors':>12} {'footprint()':>12} {'B/param':>8} {'B/Linear weight':>16}")
    per_weight = {}
    for result, label in zip(results, ("bf16", "int8", "nf4"), strict=True):
        per_weight[result.quantization] = result.linear_bytes / result.linear_params
        print(f"{label:6} {result.total_bytes / 2**20:9.1f} MiB {result.footprint / 2**20:8.1f} MiB "
              f"{result.total_bytes / params:8.3f} {per_weight[result.quantization]:16.4f}")
    kv = kv_bytes_per_token(path)
    print(f"KV cache (bf16, paged): {kv:.0f} bytes per token measured; formula 2 × layers × kv_heads × head_dim × 2 "
          "= 12288 for this model\n")
    print(f"Extrapolated (not measured): weights GiB → GPU GiB with a KV cache of {KV_TOKENS:,} tokens "
          f"and {OVERHEAD_GIB:.0f} GiB overhead")
    header = ["model", "params", "KV/token / GiB", "bf16", "int8", "nf4"]
    rows = sizing_rows(per_weight)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
