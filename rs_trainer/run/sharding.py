"""Full weights for the phases that run forwards rank by rank: generation, evaluation, the temperature probe,
rationalization and the drift measurement.

Under FSDP2 every forward of a sharded module all-gathers its weights, which is a collective: every rank would have to
run exactly the same number of forwards. Sampling does not. Ranks hold different numbers of prompts, rows end at
different steps, and PEFT's `generate` skips the root module's forward altogether. So such a phase unshards every
FSDP module once, runs on plain full weights with no collective until it ends, and reshards after it. TRL gathers
all parameters for generation under ZeRO-3 in the same way (`_unwrap_model_for_generation`); verl and OpenRLHF hand
full weights to their engines.

The cost is one full copy of the weights per GPU for the phase, in FSDP's parameter dtype (bf16 under
`mixed_precision: bf16`). A model whose full copy plus KV cache does not fit on one GPU samples through a server
(`generators: [{engine: server, ...}]`).
"""

from __future__ import annotations

import contextlib

from rs_trainer.run.deepspeed import gathered_for_generation, is_zero3


def fsdp_units(model) -> list:
    """The model's FSDP2 modules (`fully_shard`), the root first; empty when it is not sharded with FSDP2."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_weights(model):
    """Give `model` its full weights for the whole block (FSDP2: every module unsharded; ZeRO-3: every parameter
    gathered); a no-op for an unsharded model. Every rank must enter it together: unsharding is a collective.

    Re-entering it while it is held is a no-op, so a phase may call another that also asks for full weights."""
    if getattr(model, "_rs_full_weights", False):
        yield model
        return
    units = fsdp_units(model)
    if units:
        context = _fsdp2_unsharded(units)
    elif is_zero3(model):
        context = gathered_for_generation(model)
    else:
        context = contextlib.nullcontext()
    model._rs_full_weights = True
    try:
        with context:
            yield model
    finally:
        model._rs_full_weights = False


@contextlib.contextmanager
def _fsdp2_unsharded(units: list):
    root = units[0]
    # The root's lazy initialisation normally happens in its first forward. PEFT's `generate` calls the inner model,
    # so the root's forward may never have run: do it here, where every rank arrives together.
    root._get_fsdp_state()._lazy_init()
    groups = [group for unit in units for group in unit._get_fsdp_state()._fsdp_param_groups]
    saved = [group.post_forward_mesh_info for group in groups]  # each module's own reshard-after-forward
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        for group, info in zip(groups, saved, strict=True):
            group.post_forward_mesh_info = info


def trainable_full_state(model, keep: bool) -> dict | None:
    """The trainable parameters (a LoRA adapter) as full CPU tensors, on the process where `keep` is true.

    Accelerate's `get_state_dict` gathers the whole model to rank 0's memory under FSDP, even when only an adapter
    is saved: 140 GB for a 70B model each round. This gathers only the trainable parameters, one at a time (each
    `full_tensor()` is a collective, so every rank calls this)."""
    state = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        full = param.full_tensor() if hasattr(param, "full_tensor") else param
        if keep:
            state[name] = full.detach().to("cpu", copy=True)
    return state if keep else None
