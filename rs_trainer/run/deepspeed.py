"""DeepSpeed ZeRO-3: what the trainer needs beyond `accelerator.prepare`.

Under ZeRO-3 every parameter of the prepared model is a shape-[0] placeholder whose real values are split across
the ranks (`param.ds_tensor`); DeepSpeed's module hooks all-gather a layer's weights before its forward and free
them after it. That breaks four things the trainer does, each fixed here by a small function:

- `accelerator.prepare(model, optimizer)` without a DataLoader: Accelerate cannot fill `auto` batch sizes
  (`configure_batch_sizes`); it also fills `gradient_clipping: auto` with 1.0, ignoring `max_grad_norm`
  (`configure_gradient_clipping`).
- models loaded after `Accelerator()` (reward model, teachers, KL reference, served-model writer) come back
  partitioned under `zero3_init_flag` and are never wrapped by an engine (`outside_zero3_init`).
- generation runs different numbers of forwards per rank, and each forward is a collective
  (`gathered_for_generation`).
- loading a checkpoint (full weights or a LoRA adapter) or `sft_from: base` copies into the placeholders, and
  the optimizer's fp32 master copy would undo it at the next step (`load_full_state`, `gathered_for_loading`,
  `trainable_state_gathered`, `restore_trainable_gathered`).

Every function is a no-op when the model or the run is not under ZeRO-3, and `deepspeed` is imported only inside
them: it is an optional dependency. Read against DeepSpeed 0.19.8, Accelerate 1.15.0, transformers 5.23.0 and
TRL 1.16.0, and run on the CPU with gloo (`tests/test_zero3.py`).
"""

from __future__ import annotations

import contextlib
import sys

import torch


def is_zero3(model_or_accelerator) -> bool:
    """Whether `model_or_accelerator` is under DeepSpeed ZeRO-3.

    Args:
        model_or_accelerator (`Accelerator` or `torch.nn.Module`):
            An `Accelerator` (true when it runs DeepSpeed with `zero_optimization.stage` 3), or a model, a
            DeepSpeed engine or a PeftModel (true when any parameter is a ZeRO-3 partition, that is has a
            `ds_id`).
    """
    if isinstance(model_or_accelerator, torch.nn.Module):
        return any(hasattr(p, "ds_id") for p in model_or_accelerator.parameters())
    plugin = _deepspeed_plugin(model_or_accelerator)
    return plugin is not None and plugin.deepspeed_config.get("zero_optimization", {}).get("stage") == 3


def _deepspeed_plugin(accelerator):
    """The active `DeepSpeedPlugin`, or None when `accelerator` does not run DeepSpeed."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return accelerator.state.deepspeed_plugin


def _fill(config: dict, key: str, value, source: str) -> None:
    """Set `config[key]` when it is `auto` or absent; an explicit value must equal ours."""
    current = config.get(key, "auto")
    if current == "auto":
        config[key] = value
    elif float(current) != float(value):
        raise ValueError(
            f"The DeepSpeed config sets `{key}: {current}`, but this run's {source} makes it {value}; set "
            f"`{key}: auto` in the DeepSpeed config (the run's keys then decide), or make the two agree."
        )


def configure_batch_sizes(accelerator, per_device_train_batch_size: int, gradient_accumulation_steps: int) -> None:
    """Give DeepSpeed the run's batch sizes before `accelerator.prepare(model, optimizer)`.

    Accelerate 1.15's `_prepare_deepspeed` (accelerate/accelerator.py, `if deepspeed_plugin.is_auto(
    "train_micro_batch_size_per_gpu")`) reads the micro-batch from a DataLoader passed to the same `prepare`
    call, and raises `ValueError` ("requires you to pass at least one of training or evaluation dataloaders")
    when there is none and the value is `auto`, which it is in `accelerate_configs/zero3.yaml` (no DeepSpeed
    json, so every batch key is `auto`). The trainer builds its own micro-batches, so it passes no DataLoader.
    Setting the integer here makes Accelerate take it (`get_value`), and leaves its `auto` filling of the rest
    alone: `gradient_accumulation_steps` and `train_batch_size` are set here too, to the values DeepSpeed
    asserts (`train_batch_size = micro-batch x accumulation x processes`).

    `gradient_accumulation_steps` must be the number of micro-batches per optimizer step of the trainer's own
    loop: DeepSpeed steps its optimizer at a boundary of that many backward passes, and divides each loss by it.

    A no-op when `accelerator` does not run DeepSpeed. An explicit, different value in the user's DeepSpeed json
    is refused with a `ValueError` that names the fix.

    Args:
        accelerator (`Accelerator`): the run's Accelerator, before `prepare`.
        per_device_train_batch_size (`int`): SFT sequences per micro-batch on each process.
        gradient_accumulation_steps (`int`): micro-batches per optimizer step.
    """
    plugin = _deepspeed_plugin(accelerator)
    if plugin is None:
        return
    config = plugin.deepspeed_config
    _fill(config, "train_micro_batch_size_per_gpu", per_device_train_batch_size, "`per_device_train_batch_size`")
    _fill(config, "gradient_accumulation_steps", gradient_accumulation_steps, "`gradient_accumulation_steps`")
    total = per_device_train_batch_size * gradient_accumulation_steps * accelerator.num_processes
    _fill(config, "train_batch_size", total, "batch x accumulation x processes")


def configure_gradient_clipping(accelerator, max_grad_norm: float) -> None:
    """Make DeepSpeed clip at `max_grad_norm` (0: no clipping); call it before `accelerator.prepare`.

    Under DeepSpeed, `accelerator.clip_grad_norm_` only returns the engine's norm and clips nothing: the engine
    clips inside its own step, at the config's `gradient_clipping`. Accelerate's `_prepare_deepspeed` fills an
    `auto` value there with 1.0, and DeepSpeed's own default is 1.0 too, so the run's `max_grad_norm` would be
    ignored. A no-op without DeepSpeed; an explicit, different value is refused.

    Args:
        accelerator (`Accelerator`): the run's Accelerator, before `prepare`.
        max_grad_norm (`float`): the clipping norm; 0 turns clipping off (DeepSpeed clips only when it is > 0).
    """
    plugin = _deepspeed_plugin(accelerator)
    if plugin is not None:
        _fill(plugin.deepspeed_config, "gradient_clipping", float(max_grad_norm or 0.0), "`max_grad_norm`")


@contextlib.contextmanager
def outside_zero3_init():
    """Models loaded inside this block get full, unpartitioned weights, even under `zero3_init_flag: true`.

    transformers' `from_pretrained` builds the model inside `deepspeed.zero.Init` (partitioning each parameter
    as it is created) whenever `is_deepspeed_zero3_enabled()` is true. That reads a global weak reference to the
    `HfDeepSpeedConfig` Accelerate's DeepSpeed plugin registers at `Accelerator()`. So the reward model, a
    teacher, the KL reference and the served-model writer, loaded after it, come back as shape-[0] parameters that
    no engine gathers (their forward fails), and a load on rank 0 alone enters a collective `zero.Init` the other
    ranks never join. Inside this block the reference is cleared, and restored after it.

    Accelerate's `deepspeed_plugin.zero3_init_context_manager(enable=False)` does not do this in Accelerate 1.15:
    it re-registers a ZeRO-3 `HfDeepSpeedConfig` whatever the flag (`set_deepspeed_weakref`), so
    `is_deepspeed_zero3_enabled()` stays true (checked on this CPU: the model still loads as shape [0]).

    Such a model is a full copy on each process, as under DDP. A no-op when ZeRO-3 is not enabled.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    if not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref  # transformers has no getter for the object itself
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


@contextlib.contextmanager
def gathered_for_generation(model):
    """Give a ZeRO-3 `model` its full weights for a whole generation phase, with no collective inside it.

    Under ZeRO-3 every forward of every module all-gathers its weights, so all ranks would have to run exactly
    the same forwards; sampling does not (ranks hold different numbers of prompts, rows end at different steps).
    So, as TRL's `_unwrap_model_for_generation` does (trl/models/utils.py), every parameter is gathered once
    (`deepspeed.zero.GatheredParameters`) and DeepSpeed's module hooks are taken off for the block: with them the
    first forward's post-hook would free the gathered weights again and the next pre-hook gather them, a
    collective per module. One more hook than TRL removes: the root's `_start_of_forward_hook`. While the
    parameter trace is not complete (before the first training step, so in the base evaluation) it broadcasts the
    module order from rank 0 (`assert_ints_same_as_other_ranks`) in each of the first two forwards; a rank that
    runs a single forward in the phase while another runs more leaves a broadcast unmatched (checked on this CPU:
    with TRL's removal that case timed out in gloo). The hook dictionaries are put back exactly as they were, so
    DeepSpeed's trace is untouched.

    transformers' `generate` turns on `synced_gpus` (an all-reduce per decoding step, which hangs when ranks make
    different numbers of calls) whenever `is_deepspeed_zero3_enabled()`; the weights are full here, so the block
    also runs inside `outside_zero3_init`, which turns that off, and makes a teacher loaded during the phase a
    full copy too.

    Every rank must enter and leave the block together: gathering is a collective. Entering costs one full copy
    of the weights per process.

    Args:
        model (`torch.nn.Module`): the DeepSpeed engine or the module inside it (`accelerator.unwrap_model`),
            a PeftModel included. A no-op when no parameter is a ZeRO-3 partition.
    """
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield model
        return
    import deepspeed

    offload = _zero3_offload(model)
    if offload is None and hasattr(_unwrapped(model), "ds_id"):  # hooked by an engine this module cannot find
        raise RuntimeError(
            "ZeRO-3 hooks are registered on this model, but its DeepSpeed engine was not found; pass the engine "
            "itself (the model `accelerator.prepare` returned) to `gathered_for_generation`."
        )
    handles = [*offload.forward_hooks, *offload.backward_hooks, offload.fwd_pre_hook] if offload else []
    with deepspeed.zero.GatheredParameters(params):
        saved = {}
        for handle in handles:
            for ref in (handle.hooks_dict_ref, *handle.extra_dict_ref):
                hooks = ref()
                if hooks is not None and id(hooks) not in saved:
                    saved[id(hooks)] = (hooks, list(hooks.items()))
        for handle in handles:
            handle.remove()
        try:
            with outside_zero3_init():  # full weights: no `synced_gpus` in `generate`, and teachers load unsharded
                yield model
        finally:
            for hooks, items in saved.values():
                hooks.clear()
                hooks.update(items)


def _zero3_offload(model):
    """DeepSpeed's `DeepSpeedZeRoOffload` that owns `model`'s ZeRO-3 hooks, or None (partitioned by `zero.Init`
    but not wrapped by an engine). From an engine it is `engine.optimizer.parameter_offload` (TRL's
    `remove_hooks`); from the module inside an engine, the engine is found in the closure of the forward
    pre-hook it registers on that module (`_create_module_forward_pre_hook`): DeepSpeed keeps no link back."""
    from deepspeed import DeepSpeedEngine

    engine = model if isinstance(model, DeepSpeedEngine) else None
    hooks = [] if engine else list(model._forward_pre_hooks.values())
    while engine is None and hooks:
        for cell in getattr(hooks.pop(), "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                if isinstance(cell.cell_contents, DeepSpeedEngine) and cell.cell_contents.module is model:
                    engine = cell.cell_contents
    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", optimizer)  # an engine without an optimizer holds it there
    return offload if hasattr(offload, "forward_hooks") else None


def _refresh_master_weights(params: list) -> None:
    """Copy the parameters' new partitions into the ZeRO-3 optimizer's fp32 master partitions.

    The optimizer steps its own fp32 copy and writes it back over the parameters, so a value written only into
    the parameters would be undone by the next step. DeepSpeed's `load_checkpoint(load_module_only=True)` calls
    the same `refresh_fp32_params` after loading the module (deepspeed/runtime/engine.py)."""
    for optimizer in {id(o): o for o in (getattr(p, "_z3_optimizer", None) for p in params) if o}.values():
        optimizer.refresh_fp32_params()


@contextlib.contextmanager
def gathered_for_loading(model):
    """Give a ZeRO-3 `model` full weights to load into; what rank 0 writes becomes every rank's weights.

    Inside, every parameter is gathered with `GatheredParameters(..., modifier_rank=0)`; on leaving, rank 0's
    parameters are broadcast and each rank's partition is rewritten from them (`has_been_updated=True`). Then the
    optimizer's fp32 master copy is refreshed (`_refresh_master_weights`): without that the next optimizer step
    would write the old weights back (checked on this CPU: a checkpoint loaded this way was undone by one step at
    learning rate 0). Every rank must enter together and should load the same values: buffers are not
    partitioned, so each rank keeps what it loads into them. It gathers the whole model once.

    For a loader that copies into the parameters itself, such as peft's `set_peft_model_state_dict` (a LoRA
    adapter's resume), which under ZeRO-3 otherwise fails with "size mismatch" against the shape-[0] partitions.
    A no-op when no parameter is a ZeRO-3 partition.

    Args:
        model (`torch.nn.Module`): the module inside the engine (`accelerator.unwrap_model`), or the engine.
    """
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield model
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield model
    _refresh_master_weights(params)


def load_full_state(model, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load a full (unsharded) state dict, such as a saved checkpoint, into a ZeRO-3 model; returns (missing,
    unexpected) keys, as `load_state_dict(strict=False)` does.

    A plain `load_state_dict` would copy into shape-[0] partitions ("size mismatch"); this loads inside
    `gathered_for_loading`. Every rank calls it with the same state. Not under ZeRO-3: a plain
    `load_state_dict(strict=False)`.

    Args:
        model (`torch.nn.Module`): the module inside the engine (`accelerator.unwrap_model`), or the engine.
        state (`dict[str, torch.Tensor]`): the full state dict, keyed as `model.state_dict()`.
    """
    model = _unwrapped(model)
    with gathered_for_loading(model):
        result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


def _is_engine(model) -> bool:
    if "deepspeed" not in sys.modules:  # no engine exists yet; importing DeepSpeed would cost seconds and a warning
        return False
    from deepspeed import DeepSpeedEngine

    return isinstance(model, DeepSpeedEngine)


def _gathered(params: list, modifier_rank: int | None = None):
    """`deepspeed.zero.GatheredParameters(params)` for ZeRO-3 partitions, a no-op context for plain ones."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def full_state_gathered(model, keep: bool) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict at full shape on the CPU, where `keep` is true, for a full fine-tuning checkpoint.

    Accelerate's `get_state_dict` refuses under ZeRO-3 unless the DeepSpeed config sets
    `stage3_gather_16bit_weights_on_model_save`; this gathers one parameter at a time instead (every rank calls it)
    and keeps the parameters' own dtype. Buffers are not partitioned and are copied as they are."""
    module = _unwrapped(model)
    state = {}
    for name, param in module.named_parameters():
        with _gathered([param]):
            if keep:
                state[name] = param.detach().to("cpu", copy=True)
    if keep:
        persistent = set(module.state_dict())  # without non-persistent buffers (rotary frequencies)
        for name, buffer in module.named_buffers():
            if name in persistent:
                state[name] = buffer.detach().to("cpu", copy=True)
    return state if keep else None


def trainable_state_gathered(model, keep: bool = True) -> dict[str, torch.Tensor] | None:
    """A CPU copy of the trainable parameters at their full shape (the adapter with LoRA, everything without),
    for `sft_from: base`; None where `keep` is false.

    Under ZeRO-3 a plain copy holds shape-[0] placeholders, and restoring them is a no-op. So each parameter is
    gathered in turn (one at a time, so at most one full parameter is gathered at once); every rank calls this,
    since gathering is a collective. Without ZeRO-3 it is a plain copy.

    Args:
        model (`torch.nn.Module`): the prepared model (the engine or the module inside it).
        keep (`bool`, *optional*, defaults to `True`): whether this process keeps the copy. Rank 0 must:
            `restore_trainable_gathered` writes rank 0's values to every rank.
    """
    state = {}
    for name, param in _unwrapped(model).named_parameters():
        if not param.requires_grad:
            continue
        with _gathered([param]):
            if keep:
                state[name] = param.detach().to("cpu", copy=True)
    return state if keep else None


@torch.no_grad()
def restore_trainable_gathered(model, state: dict[str, torch.Tensor] | None) -> None:
    """Write `state` (from `trainable_state_gathered`) back into the trainable parameters.

    Under ZeRO-3 each trainable parameter is gathered with `modifier_rank=0`: rank 0 copies its value in, and on
    leaving the block it is broadcast and re-partitioned on every rank; then the optimizer's fp32 master copy is
    refreshed (`_refresh_master_weights`), or the next step would write the old weights back. Every rank calls
    this; only rank 0's `state` is read, the others may pass None. Without ZeRO-3 each process copies its own.

    Args:
        model (`torch.nn.Module`): the prepared model (the engine or the module inside it).
        state (`dict[str, torch.Tensor]` or `None`): full-shape tensors by parameter name.
    """
    module = _unwrapped(model)
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    zero3 = is_zero3(module)
    copies = state is not None and (not zero3 or torch.distributed.get_rank() == 0)
    for name, param in params:
        with _gathered([param], modifier_rank=0):
            if copies and name in state:
                param.copy_(state[name].to(param.device))
    if zero3:
        _refresh_master_weights([p for _, p in params])


def _unwrapped(model):
    """The module inside a DeepSpeed engine, or `model` itself."""
    return model.module if _is_engine(model) else model
