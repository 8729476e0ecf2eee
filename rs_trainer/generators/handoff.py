"""What a generator is handed: the run's fixed parts once (`RunContext`), and each round the policy's weights
(`PolicyWeights`). Each engine takes the weights its own way (see `rs_trainer.generators`): the in-process engine
samples the live model, a colocated vLLM refreshes its copy in place or loads the round's adapter, a server that
stays up hot-loads the adapter, and a managed server is started on a model folder written for the round."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunContext:
    """The run's parts that every generator may need, fixed for the run."""

    accelerator: Any
    tokenizer: Any  # the policy's: its chat template renders the prompts SFT trains on
    model_args: Any  # TRL's ModelConfig: dtype, LoRA rank, quantization
    model_path: str  # the base model's folder
    batch_size: int  # `generation_batch_size` (0: chosen by the engine)
    local_engine: str  # `generation_engine` of the in-process sampler
    token_budget: int  # `generation_token_budget`
    max_model_len: int  # the longest training prompt + the longest completion the run asks for
    server_log: Callable[[int, str], Path]  # (round, generator name) -> a managed server's log file
    served_model: Callable[[int], Path]  # round -> the folder a managed server loads the policy from


@dataclass(frozen=True)
class PolicyWeights:
    """Round `round`'s policy: the base model in round 0, then what the last round trained.

    `checkpoint` is the last round's saved adapter or model folder (None in round 0, or without checkpoints), and
    `live()` a context manager that yields the trained model in this process on full weights (unsharded under FSDP2,
    gathered under ZeRO-3), the same on every rank."""

    round: int
    checkpoint: Path | None
    live: Callable[[], AbstractContextManager]
    lora: bool


def named_full_tensors(model):
    """(name, tensor) of `model`'s weights in the checkpoint's names, whole: a sharded `DTensor` is gathered (a
    collective: every rank calls this in the same order) and wrapper prefixes are dropped."""
    for name, tensor in model.state_dict().items():
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        yield name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", ""), tensor
