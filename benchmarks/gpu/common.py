"""What the GPU measurements share: public model shapes (written inline: nothing can be downloaded on the GPU
machine), the device, timing, the measured peaks (HBM bandwidth and bf16 matmul rate) and result files.

Every script here takes `--smoke`: tiny sizes that run on a CPU in seconds, so that the arithmetic and the output
format are checked before any GPU time is spent. Figures from a smoke run mean nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

# Public `config.json` values of the models the recipes name, cut to the fields that set shapes. The vocabularies
# are the real ones; the tokenizer the GPU machine has (SmolLM2's, 49152 tokens) covers the first ids only, which
# is enough: ids past it decode to nothing.
SHAPES = {
    # meta-llama/Llama-3.2-1B-Instruct: 1.24B parameters (tied embeddings)
    "llama-3.2-1b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "vocab_size": 128256,
    },
    # Qwen/Qwen2.5-1.5B-Instruct: 1.54B parameters (tied embeddings)
    "qwen2.5-1.5b": {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "use_sliding_window": False,
        "max_window_layers": 21,
        "tie_word_embeddings": True,
        "vocab_size": 151936,
    },
}
# `--smoke`: the same family, a few hundred thousand parameters, on the tokenizer's own vocabulary.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 16384,
}


def model_config(shape: str, tokenizer, tiny: bool = False):
    """A transformers config of `shape` with the tokenizer's special tokens (`tiny`: `TINY` sizes)."""
    from transformers import AutoConfig

    values = dict(SHAPES[shape])
    model_type = values.pop("model_type")
    if tiny:
        values.update(TINY, vocab_size=len(tokenizer))
        if model_type == "qwen2":
            values.pop("head_dim")  # qwen2 derives it
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    return AutoConfig.for_model(model_type, **values, **ids, pad_token_id=tokenizer.pad_token_id)


def pick_device(smoke: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not smoke:
        raise SystemExit("No CUDA device; these measurements need a GPU (or `--smoke` for the CPU check).")
    return torch.device("cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int) -> float:
    """Mean seconds of `fn()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def measure_bandwidth(device: torch.device, smoke: bool) -> dict:
    """Memory bandwidth from a large device-to-device copy: bytes read plus bytes written over the time."""
    numel = (2**20 if smoke else 2**31) // 2  # 1 MiB / 2 GiB of bf16 (4 GiB moved per copy)
    src = torch.empty(numel, dtype=torch.bfloat16, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, repeats=3 if smoke else 20, warmup=1 if smoke else 3)
    moved = 2 * src.numel() * src.element_size()
    return {"copy_bytes_moved": moved, "copy_seconds": seconds, "bandwidth_bytes_per_s": moved / seconds}


def measure_matmul(device: torch.device, smoke: bool) -> dict:
    """The bf16 matmul rate of one large square `torch.matmul` (random data): 2 n^3 FLOPs a product."""
    n = 256 if smoke else 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    seconds = timed(lambda: torch.matmul(a, b), device, repeats=3 if smoke else 10, warmup=1 if smoke else 3)
    return {"matmul_n": n, "matmul_seconds": seconds, "matmul_flops_per_s": 2 * n**3 / seconds}


def load_peaks(path: Path | None, device: torch.device, smoke: bool) -> dict:
    """The peaks measured by `peaks.py`, or measured now when its file is missing."""
    if path and Path(path).exists():
        return json.loads(Path(path).read_text())
    return {**measure_bandwidth(device, smoke), **measure_matmul(device, smoke)}


def param_count(model, trainable_only: bool = False) -> int:
    """Parameters, tied ones once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def environment() -> dict:
    import platform

    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("accelerate", "peft", "trl", "datasets"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def write_result(out: str | Path, name: str, result: dict) -> Path:
    """`<out>/<name>.json`, with the environment it was measured in."""
    path = Path(out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "environment": environment(), **result}, indent=2, default=str))
    print(f"wrote {path}", flush=True)
    return path


def gb(n: float) -> str:
    return f"{n / 1e9:.3f} GB"
