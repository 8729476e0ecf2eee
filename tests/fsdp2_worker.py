"""Runs under `torchrun --nproc_per_node 2` (gloo) with Accelerate put into FSDP2 mode on the CPU.

Why a fixture like this: Accelerate 1.15 turns FSDP on only for GPU-like devices (an FSDP config with `use_cpu` comes
up as one plain process), yet FSDP2 itself (`fully_shard`) runs on the CPU with gloo. So the state is switched to
FSDP2 after construction. This relies on Accelerate internals, so it lives in tests/, not in the package. A short
collective timeout turns a deadlock into a failure within seconds.

    torchrun --nproc_per_node 2 tests/fsdp2_worker.py run <rs_trainer arguments...>
    torchrun --nproc_per_node 2 tests/fsdp2_worker.py generate <model folder> <engine> <lora|full> <out.json>
    torchrun --nproc_per_node 2 tests/fsdp2_worker.py drift <model folder> <out.json>
    torchrun --nproc_per_node 2 tests/fsdp2_worker.py sft <model folder> <lora|full> <out.json>
    torchrun --nproc_per_node 2 tests/fsdp2_worker.py shared <output dir>
    torchrun --nproc_per_node 2 tests/fsdp2_worker.py timeout <seconds>
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
TIMEOUT = int(os.environ.get("FSDP2_TEST_TIMEOUT", "60"))


def fsdp2_accelerator(timeout: int = TIMEOUT):
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs

    acc = Accelerator(
        cpu=True, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo", timeout=timedelta(seconds=timeout))]
    )
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=True,
        cpu_ram_efficient_loading=False,
        state_dict_type="FULL_STATE_DICT",
    )
    acc.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # else prepare() falls back to MULTI_CPU
    return acc


def model_args_for(model: str, lora: bool):
    from trl import ModelConfig

    extra = {"lora_target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0} if lora else {}
    return ModelConfig(model_name_or_path=model, dtype="float32", use_peft=lora, **extra)


def prepared(acc, model_args, seed: int = 0):
    """The policy as the trainer loads it (LoRA from the same seed on every rank and in the reference), prepared."""
    from trl import get_peft_config

    from rs_trainer.run.models import load_policy

    torch.manual_seed(seed)
    model, _ = load_policy(model_args, get_peft_config(model_args))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return acc.prepare(model, optimizer)


def run(argv: list[str]) -> int:
    """The whole trainer on the FSDP2 accelerator; with `RS_KILL_AT` set, SIGKILLed as tests/kill_at.py does."""
    if os.environ.get("RS_KILL_AT"):
        import kill_at

        os.replace = kill_at.replace_or_die
    from rs_trainer.cli import parse_args, run_command
    from rs_trainer.trainer import RejectionSamplingTrainer

    def body():
        args, model_args = parse_args(argv)
        trainer = RejectionSamplingTrainer(args, model_args, accelerator=fsdp2_accelerator())
        trainer.setup()
        trainer.train()
        trainer.cleanup()

    return run_command("rs_trainer", body)


def generate_uneven(model_path: str, engine: str, kind: str, out: str) -> None:
    """Rank 0 has three prompts and rank 1 one (one prompt per batch), and an end token chosen so that rank 0's rows
    end after two steps while rank 1's go on: unequal numbers of batches and of decode steps. Completions must equal
    an unsharded copy's, and a training step and a second generation must work after it."""
    from rs_trainer.phases.generation import SamplingParams, encode_prompts, generate
    from rs_trainer.phases.sft import build_example, train_steps
    from rs_trainer.run.models import load_policy, load_tokenizer
    from rs_trainer.run.sharding import full_weights

    acc = fsdp2_accelerator()
    lora = kind == "lora"
    model_args = model_args_for(model_path, lora)
    tokenizer = load_tokenizer(model_path)
    texts = ["What is 2 + 3?", "Name a colour.", "Count to three.", "Say hello."]
    prompts = [{"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": t}]} for i, t in enumerate(texts)]
    mine = prompts[:3] if acc.process_index == 0 else prompts[3:]
    ids = encode_prompts(tokenizer, mine)

    from trl import get_peft_config

    torch.manual_seed(0)
    reference, _ = load_policy(model_args, get_peft_config(model_args))
    reference.eval()
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    kwargs = {"batch_size": 2, "engine": engine, "seed": 7}
    # The end token: the third token of rank 0's first row (every rank computes the same, on the unsharded copy).
    probe = generate(reference, tokenizer, prompts[:3], 2, params, **kwargs)
    eos = tokenizer(probe[0]["completion"], add_special_tokens=False)["input_ids"][2]
    reference.generation_config.eos_token_id = [tokenizer.eos_token_id, eos]
    model, optimizer = prepared(acc, model_args)
    acc.unwrap_model(model).generation_config.eos_token_id = [tokenizer.eos_token_id, eos]
    kwargs["prompt_ids"] = ids
    with full_weights(acc.unwrap_model(model)) as full:
        sharded = generate(full, tokenizer, mine, 2, params, **kwargs)
    expected = generate(reference, tokenizer, mine, 2, params, **kwargs)
    # Training still works after the phase, and a second phase samples from the trained weights.
    example = build_example(ids[0], [5, 6, 7], 64)
    from transformers import get_scheduler

    scheduler = get_scheduler("constant", optimizer)
    losses, _ = train_steps(acc, model, optimizer, scheduler, [[[example]]], tokenizer.pad_token_id)
    with full_weights(acc.unwrap_model(model)) as full:
        again = generate(full, tokenizer, mine, 2, SamplingParams(temperature=0.8, max_new_tokens=6), **kwargs)
    result = {"sharded": sharded, "expected": expected, "loss": losses[0], "again": len(again), "eos": eos}
    Path(f"{out}.rank{acc.process_index}").write_text(json.dumps(result))


def drift(model_path: str, out: str) -> None:
    """KL to the adapter-disabled model and entropy under FSDP2, rank 0 with five samples and rank 1 with two
    (unequal numbers of batches), summed over the ranks; and the same samples on an unsharded copy."""
    from trl import get_peft_config

    from rs_trainer.phases.divergence import kl_and_entropy
    from rs_trainer.phases.generation import encode_prompts
    from rs_trainer.phases.sft import build_example
    from rs_trainer.run.models import load_policy, load_tokenizer
    from rs_trainer.run.sharding import full_weights

    acc = fsdp2_accelerator()
    model_args = model_args_for(model_path, lora=True)
    tokenizer = load_tokenizer(model_path)
    prompts = [{"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"{i} + {i}?"}]} for i in range(7)]
    ids = encode_prompts(tokenizer, prompts)
    examples = [build_example(seq, [100 + i, 200 + 3 * i, 7, 9 + i], 64) for i, seq in enumerate(ids)]
    mine = examples[:5] if acc.process_index == 0 else examples[5:]
    model, _ = prepared(acc, model_args)
    _perturb_lora(acc.unwrap_model(model))
    with full_weights(acc.unwrap_model(model)) as full:
        sums = kl_and_entropy(full, mine, tokenizer.pad_token_id, batch_size=2)
    from accelerate.utils import gather_object

    total = {k: sum(part[k] for part in gather_object([sums])) for k in sums}
    torch.manual_seed(0)
    reference, _ = load_policy(model_args, get_peft_config(model_args))
    _perturb_lora(reference)
    expected = kl_and_entropy(reference, examples, tokenizer.pad_token_id, batch_size=2)
    if acc.is_main_process:
        Path(out).write_text(json.dumps({"sharded": total, "expected": expected}))


def _perturb_lora(model) -> None:
    """Move every LoRA B away from zero with a fixed draw, so that the adapter changes the distribution."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                full_shape = p.full_tensor().shape if hasattr(p, "full_tensor") else p.shape
                values = torch.randn(full_shape, generator=gen) * 0.5
                if hasattr(p, "full_tensor"):
                    from torch.distributed.tensor import distribute_tensor

                    values = distribute_tensor(values, p.device_mesh, p.placements)
                p.copy_(values)


def sft(model_path: str, kind: str, out: str) -> None:
    """Three optimizer steps on nine examples, batch 2 per rank: the losses and final weights."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_sft import make_examples
    from transformers import get_scheduler

    from rs_trainer.phases.sft import plan_steps, train_steps
    from rs_trainer.run.models import load_tokenizer
    from rs_trainer.run.sharding import trainable_full_state

    acc = fsdp2_accelerator()
    tokenizer = load_tokenizer(model_path)
    examples = make_examples(tokenizer, 9)
    model, optimizer = prepared(acc, model_args_for(model_path, kind == "lora"))
    steps = plan_steps(examples, 1, 2, 1, acc.process_index, acc.num_processes, seed=0)
    scheduler = get_scheduler("constant", optimizer)
    losses, _ = train_steps(acc, model, optimizer, scheduler, steps, tokenizer.pad_token_id)
    state = trainable_full_state(acc.unwrap_model(model), keep=acc.is_main_process)
    if acc.is_main_process:
        torch.save({"losses": losses, "state": state}, out)


def timeout(seconds: str, folder: str) -> None:
    """`ddp_timeout` reaches the process group: rank 1 arrives at a barrier long after rank 0, which must give up
    after about `seconds`. Plain MULTI_CPU here: the accelerator is the trainer's own.

    The short timeout also bounds the process group's set-up, so both ranks first meet through files in `folder`
    (no collective): on a loaded machine one rank could start seconds after the other, and the first would then time
    out while connecting, before the barrier under test (seen once in 3 repetitions with 2 other jobs on 2 cores)."""
    import time

    from rs_trainer.config import RSConfig
    from rs_trainer.run.ranks import make_accelerator

    rank = int(os.environ["RANK"])
    (Path(folder) / f"ready.rank{rank}").touch()
    deadline = time.monotonic() + 300
    while not all((Path(folder) / f"ready.rank{r}").exists() for r in (0, 1)):
        assert time.monotonic() < deadline, "the other rank never started"
        time.sleep(0.05)
    acc = make_accelerator(RSConfig(ddp_timeout=int(seconds), report_to=["none"]))
    start = time.time()
    if acc.process_index == 1:
        time.sleep(3 * int(seconds))
    try:
        acc.wait_for_everyone()
    except Exception as err:
        # gloo's message names the timeout it waited: "Timed out waiting 2000ms for recv operation to complete"
        reason = f"{type(err).__name__}: {err}"
        print(f"rank {acc.process_index} gave up after {time.time() - start:.1f} s: {reason}", flush=True)
        os._exit(3)


def shared(output_dir: str) -> int:
    """Rank 1 is pointed at a folder of its own: the run must be refused, by name, on every rank."""
    from rs_trainer.cli import run_command
    from rs_trainer.run.ranks import check_shared_storage

    acc = fsdp2_accelerator()
    folder = Path(output_dir) / ("shared" if acc.process_index == 0 else "elsewhere")
    return run_command("rs_trainer", lambda: check_shared_storage(acc, folder))


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "run":
        sys.exit(run(rest))
    if mode == "shared":
        sys.exit(shared(*rest))
    if mode == "timeout":  # the test of a rank that never arrives: no barrier at the end
        sys.exit(timeout(*rest))
    {"generate": generate_uneven, "drift": drift, "sft": sft}[mode](*rest)
    from helpers import leave_together

    leave_together()
