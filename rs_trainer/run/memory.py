"""An estimate of one GPU's memory for a recipe, from the model's config alone (no weights loaded), as `--dry_run`
prints it: weights, gradients and AdamW's two moments under the launch's sharding, the in-process sampler's KV
cache at the token budget, and the share a colocated vLLM engine takes. Activations are not estimated (they
depend on the batch's lengths; `gradient_checkpointing` cuts them).

The counts follow what the code does: a LoRA adapter trains in float32 (PEFT casts adapters up under a bf16
model), full fine-tuning keeps gradients and moments in the weights' dtype (`torch.optim.AdamW`), FSDP2 and
ZeRO-3 split weights, gradients and moments over the processes, and sampling gathers the full weights on each
process (FSDP2 unshards once per sampling phase; ZeRO-3 gathers), so that is the peak.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
NF4_BYTES = 0.5 + 1 / 64 * 1  # 4 bits a weight, one 8-bit absmax per 64 (double quantisation), roughly
DEFAULT_GPU_TOKEN_BUDGET = 262_144  # `generation_token_budget: 0` on a GPU (rs_trainer.phases.generation)


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model: its parameters, the in/out sizes of its linear layers by module name,
    and its KV cache's size per token."""

    parameters: int
    linears: dict[str, tuple[int, int]]
    kv_bytes_per_token_per_byte: int  # 2 x layers x kv heads x head dim: multiply by the dtype's bytes


def model_shape(config) -> ModelShape:
    """Count on the meta device: the model is built from its config with no memory behind its tensors."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # from_config leaves a tied output head untied; from_pretrained ties it
    parameters = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    linears = {
        name: (m.in_features, m.out_features) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    return ModelShape(parameters, linears, kv_bytes_per_token(config, dtype_bytes=1))


def kv_bytes_per_token(config, dtype_bytes: int = 2) -> int:
    """KV-cache bytes one token adds: keys and values of every layer, `dtype_bytes` a value (a multimodal config
    is read through its text model's)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def lora_parameters(shape: ModelShape, rank: int, targets) -> int:
    """LoRA's trainable parameters: r x (in + out) for each targeted linear layer. `all-linear` is every linear
    layer but the output head (PEFT's rule); a list names modules by their last name part (`q_proj`).

    >>> shape = ModelShape(0, {"model.layers.0.q_proj": (64, 64), "model.layers.0.up_proj": (64, 256),
    ...                        "lm_head": (64, 1000)}, 0)
    >>> lora_parameters(shape, 8, "all-linear"), lora_parameters(shape, 8, ["q_proj"])
    (3584, 1024)
    """
    if targets in ("all-linear", ["all-linear"]):
        chosen = [n for n in shape.linears if n.split(".")[-1] != "lm_head"]
    else:
        names = {targets} if isinstance(targets, str) else set(targets or ())
        chosen = [n for n in shape.linears if n.split(".")[-1] in names]
    return sum(rank * (i + o) for i, o in (shape.linears[n] for n in chosen))


def estimate(
    shape: ModelShape,
    *,
    dtype: str,
    use_peft: bool,
    lora_r: int = 16,
    lora_targets=None,
    load_in_4bit: bool = False,
    processes: int = 1,
    sharded: bool = False,
    token_budget: int = 0,
    vllm_share: float | None = None,
) -> dict:
    """GiB per GPU for one process of the run (see the module's docstring), each part and the training and sampling
    totals. `sharded`: FSDP2 or ZeRO-3 over `processes`.

    A 1B-parameter bf16 model, full fine-tuning on 8 sharded GPUs: 2 + 2 + 4 bytes a parameter over 8 processes
    for training, the full 2 bytes a parameter to sample.

    >>> shape = ModelShape(10**9, {}, 2 * 16 * 8 * 64)
    >>> plan = estimate(shape, dtype="bfloat16", use_peft=False, processes=8, sharded=True, token_budget=100_000)
    >>> round(plan["weights_gib"], 3), round(plan["optimizer_gib"], 3), round(plan["sampling_weights_gib"], 3)
    (0.233, 0.466, 1.863)
    >>> round(plan["kv_cache_gib"], 3)  # 16 layers x 8 KV heads x 64 x 2 (K and V) x 2 bytes x 100,000 tokens
    3.052
    """
    b = DTYPE_BYTES.get(dtype, 4)
    weight_bytes = shape.parameters * b
    if load_in_4bit:  # bitsandbytes quantises the linear layers but the output head; the rest stays in `dtype`
        quantised = sum(i * o for n, (i, o) in shape.linears.items() if n.split(".")[-1] != "lm_head")
        weight_bytes -= quantised * (b - NF4_BYTES)
    split = processes if sharded else 1
    if use_peft:
        trainable = lora_parameters(shape, lora_r, lora_targets or "all-linear")
        trainable_bytes, adapter = 4, trainable * 4  # float32 adapters: weights, gradients, two moments
    else:
        trainable, trainable_bytes, adapter = shape.parameters, b, 0
    plan = {
        "parameters": shape.parameters,
        "trainable_parameters": trainable,
        "weights_gib": (weight_bytes + adapter) / split / GIB,
        "gradients_gib": trainable * trainable_bytes / split / GIB,
        "optimizer_gib": 2 * trainable * trainable_bytes / split / GIB,
        "sampling_weights_gib": (weight_bytes + adapter) / GIB,
        "kv_cache_gib": token_budget * shape.kv_bytes_per_token_per_byte * b / GIB,
    }
    plan["training_gib"] = plan["weights_gib"] + plan["gradients_gib"] + plan["optimizer_gib"]
    # Sampling: the gathered weights, the KV cache; the optimizer's moments are freed after each round's SFT.
    plan["sampling_gib"] = plan["sampling_weights_gib"] + plan["kv_cache_gib"]
    if vllm_share is not None:
        plan["vllm_share_of_gpu"] = vllm_share
        plan["vllm_weights_gib"] = shape.parameters * b / GIB  # its own copy, unquantised
    plan["not_counted"] = "activations (batch and length dependent), CUDA context and allocator slack"
    return plan
