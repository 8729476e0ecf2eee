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
from dataclasses import dataclass

from rs_trainer.run.deepspeed import (
    full_state_gathered,
    gathered_for_generation,
    is_zero3,
    outside_zero3_init,
    trainable_state_gathered,
)
from rs_trainer.run.deepspeed import load_full_state as load_zero3


def fsdp_units(model) -> list:
    """The model's FSDP2 modules (`fully_shard`), the root first; empty when it is not sharded with FSDP2."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@dataclass(frozen=True)
class Sharding:
    """How the policy's weights lie across the ranks: `plain` (whole on each process: one process, or DDP), `fsdp2`
    (FSDP2's `fully_shard`) or `zero3` (DeepSpeed ZeRO-3 partitions). Chosen once from the prepared model
    (`Sharding.of`), it is the one place that tells the three apart; the phases ask it for full weights
    (`full_weights`), a checkpoint's state (`state_to_save`), a checkpoint loaded back (`load_full_state`), a copy of
    the trainable weights (`trainable_copy`), and a frozen model loaded whole (`frozen_load`)."""

    kind: str

    @classmethod
    def of(cls, model) -> Sharding:
        """`model`'s layout: the prepared policy (a DeepSpeed engine or a PeftModel will do)."""
        if fsdp_units(model):
            return cls("fsdp2")
        if is_zero3(model):
            return cls("zero3")
        return cls("plain")

    @staticmethod
    def frozen_load():
        """A context in which a model loaded (a reward model, a teacher, the KL reference, the served-model writer)
        gets its full weights on this process, never ZeRO-3 partitions (`outside_zero3_init`: a no-op unless
        DeepSpeed's ZeRO-3 init is on). It holds before the policy exists, so it asks nothing of the layout."""
        return outside_zero3_init()

    @contextlib.contextmanager
    def full_weights(self, model):
        """Give `model` its full weights for the whole block (FSDP2: every module unsharded; ZeRO-3: every parameter
        gathered); a no-op for an unsharded model. Every rank must enter it together: unsharding is a collective.

        Re-entering it while it is held is a no-op, so a phase may call another that also asks for full weights."""
        if getattr(model, "_rs_full_weights", False):
            yield model
            return
        if self.kind == "fsdp2":
            context = _fsdp2_unsharded(fsdp_units(model))
        elif self.kind == "zero3":
            context = gathered_for_generation(model)
        else:
            context = contextlib.nullcontext()
        model._rs_full_weights = True
        try:
            with context:
                yield model
        finally:
            model._rs_full_weights = False

    def state_to_save(self, accelerator, model, lora: bool, keep: bool) -> dict | None:
        """What a round's checkpoint holds, as full tensors, where `keep` is true (every rank calls this): the
        adapter with LoRA, else the whole model. ZeRO-3 partitions and FSDP2 adapter shards are gathered one
        parameter at a time; otherwise Accelerate's `get_state_dict`."""
        if self.kind == "zero3":
            return trainable_state_gathered(model, keep=keep) if lora else full_state_gathered(model, keep=keep)
        if self.kind == "fsdp2" and lora:
            return trainable_full_state(accelerator.unwrap_model(model), keep=keep)  # the adapter only
        return accelerator.get_state_dict(model)

    def load_full_state(self, model, state: dict) -> tuple[list[str], list[str]]:
        """Load a full (unsharded) state dict into `model`; returns (missing, unexpected) keys. FSDP2's DTensor
        parameters take it through torch's `set_model_state_dict`, which shards each tensor (a plain
        `load_state_dict` would mix tensors and DTensors); ZeRO-3 partitions are gathered to load. Every rank calls
        this."""
        if self.kind == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            result = set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
            return list(result.missing_keys), list(result.unexpected_keys)
        if self.kind == "zero3":
            return load_zero3(model, state)
        return model.load_state_dict(state, strict=False)

    def trainable_copy(self, model, main: bool) -> dict | None:
        """A CPU copy of the trainable weights at full shape (`sft_from: base`): under ZeRO-3 gathered one parameter
        at a time and kept by the main process alone; otherwise a copy on every rank."""
        return trainable_state_gathered(model, keep=main or self.kind != "zero3")


def full_weights(model):
    """`Sharding.of(model).full_weights(model)`: full weights for a block, for callers without the run's layout."""
    return Sharding.of(model).full_weights(model)


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
