"""Runs under `torchrun --nproc_per_node 2` (gloo) with Accelerate in DeepSpeed ZeRO-3 mode on the CPU.

DeepSpeed runs ZeRO-3 on the CPU: with `DS_ACCELERATOR=cpu` and no oneCCL bindings installed its CPU accelerator
falls back to gloo. Accelerate needs the backend named (`InitProcessGroupKwargs(backend="gloo")`): without it, on a
machine with no GPU it takes no backend, and each process believes it is rank 0 of 1 while DeepSpeed's process
group has two. A short collective timeout turns a deadlock into a failure within seconds.

    torchrun --nproc_per_node 2 tests/zero3_worker.py prepare <model folder> <out.json>
    torchrun --nproc_per_node 2 tests/zero3_worker.py generate <model folder> <rs|hf> <out.json>
    torchrun --nproc_per_node 2 tests/zero3_worker.py load <model folder> <lora|full> <out.json>
    torchrun --nproc_per_node 2 tests/zero3_worker.py restore <model folder> <lora|full> <out.json>
    torchrun --nproc_per_node 2 tests/zero3_worker.py run <rs_trainer arguments...>
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

TIMEOUT = int(os.environ.get("ZERO3_TEST_TIMEOUT", "60"))


def zero3_accelerator(timeout: int = TIMEOUT):
    from accelerate import Accelerator, DeepSpeedPlugin
    from accelerate.utils import InitProcessGroupKwargs

    plugin = DeepSpeedPlugin(zero_stage=3, zero3_init_flag=True)
    handler = InitProcessGroupKwargs(backend="gloo", timeout=timedelta(seconds=timeout))
    return Accelerator(deepspeed_plugin=plugin, kwargs_handlers=[handler])


def load(model_path: str, lora: bool = False):
    """The policy as `from_pretrained` gives it after `Accelerator()`: partitioned by `zero3_init_flag`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    return model


def prepared(acc, model, lr: float, max_grad_norm: float = 1.0, optimizer_cls=torch.optim.SGD):
    from rs_trainer.run.deepspeed import configure_batch_sizes, configure_gradient_clipping

    configure_batch_sizes(acc, per_device_train_batch_size=2, gradient_accumulation_steps=1)
    configure_gradient_clipping(acc, max_grad_norm)
    optimizer = optimizer_cls([p for p in model.parameters() if p.requires_grad], lr=lr)
    return acc.prepare(model, optimizer)


def train(acc, model, optimizer, tokenizer_pad: int, max_grad_norm: float, steps: int = 1) -> list[float]:
    """`steps` optimizer steps through the trainer's own loop on a fixed batch (one micro-batch of 2 per rank)."""
    from transformers import get_scheduler

    from rs_trainer.phases.sft import build_example, train_steps

    rank = acc.process_index
    micro = [build_example([1, 5 + rank, 9, 13], [20 + rank + i, 30, 40 - i], 64) for i in range(2)]
    batch = [[micro]] * steps
    scheduler = get_scheduler("constant", optimizer)
    losses, _ = train_steps(acc, model, optimizer, scheduler, batch, tokenizer_pad, max_grad_norm=max_grad_norm)
    return losses


def full_params(acc, model) -> dict[str, torch.Tensor]:
    from rs_trainer.run.deepspeed import trainable_state_gathered

    return trainable_state_gathered(model)


def prepare_case(model_path: str, out: str) -> None:
    """`prepare` with no DataLoader, the DeepSpeed config it ends with, one step clipped at `max_grad_norm`, and
    extra models loaded inside and outside `outside_zero3_init`."""
    from transformers import AutoModelForCausalLM

    from rs_trainer.run.deepspeed import is_zero3, outside_zero3_init

    acc = zero3_accelerator()
    model = load(model_path)
    loaded_shape = list(model.model.embed_tokens.weight.shape)
    clip = 1e-3
    engine, optimizer = prepared(acc, model, lr=1.0, max_grad_norm=clip)
    config = {k: acc.deepspeed_config[k] for k in ("train_micro_batch_size_per_gpu", "train_batch_size")}
    config.update(
        gradient_accumulation_steps=acc.deepspeed_config["gradient_accumulation_steps"],
        gradient_clipping=engine.gradient_clipping(),
    )
    before = full_params(acc, engine)
    train(acc, engine, optimizer, 0, clip)
    after = full_params(acc, engine)
    change = torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before)).item()
    grad_norm = float(engine.get_global_grad_norm())
    with outside_zero3_init():
        extra = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    partitioned = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        extra_logits = extra(input_ids=ids).logits
    result = {
        "zero3": [is_zero3(acc), is_zero3(engine), is_zero3(acc.unwrap_model(engine)), is_zero3(extra)],
        "loaded_shape": loaded_shape,
        "config": config,
        "change": change,
        "grad_norm": grad_norm,
        "extra_shape": list(extra.model.embed_tokens.weight.shape),
        "partitioned_shape": list(partitioned.model.embed_tokens.weight.shape),
        "extra_finite": bool(torch.isfinite(extra_logits).all()),
    }
    Path(f"{out}.rank{acc.process_index}").write_text(json.dumps(result))


def generate_case(model_path: str, engine_name: str, out: str) -> None:
    """Rank 0 has three prompts of six new tokens and rank 1 one prompt of one token (one prompt per batch): 18
    forwards against one. Completions (sampled with a fixed seed: the tiny model's greedy text is all newlines)
    and logits must equal an unsharded copy's (loaded with `outside_zero3_init`), before any training step (while
    DeepSpeed still records its parameter trace, with a collective per forward of the root) and after one; the
    hooks must be back afterwards, and training must go on."""
    from rs_trainer.phases.generation import SamplingParams, encode_prompts, generate
    from rs_trainer.run.deepspeed import gathered_for_generation, outside_zero3_init
    from rs_trainer.run.models import load_tokenizer

    acc = zero3_accelerator()
    tokenizer = load_tokenizer(model_path)
    texts = ["What is 2 + 3?", "Name a colour.", "Count to three.", "Say hello."]
    prompts = [{"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": t}]} for i, t in enumerate(texts)]
    mine = prompts[:3] if acc.process_index == 0 else prompts[3:]
    with outside_zero3_init():
        reference = load(model_path).eval()
    engine, optimizer = prepared(acc, load(model_path), lr=0.05)
    module = acc.unwrap_model(engine)
    params = SamplingParams(temperature=1.0, max_new_tokens=6 if acc.process_index == 0 else 1)
    kwargs = {"batch_size": 1, "engine": engine_name, "prompt_ids": encode_prompts(tokenizer, mine), "seed": 3}
    probe = torch.tensor([kwargs["prompt_ids"][0]])

    def logits(model):
        with torch.no_grad():
            return model(input_ids=probe).logits

    def hook_counts():
        return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in module.modules())

    hooks_before = hook_counts()
    with gathered_for_generation(module) as full:
        first = generate(full, tokenizer, mine, 1, params, **kwargs)
        hooks_inside = hook_counts()
    with gathered_for_generation(module) as full:  # apart: rank 1 must run a single forward in the first block
        first_logits = logits(full)
    expected_first = generate(reference, tokenizer, mine, 1, params, **kwargs)
    base_logits = logits(reference)
    losses = train(acc, engine, optimizer, tokenizer.pad_token_id, 1.0)
    trained = full_params(acc, engine)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(trained[name])
    with gathered_for_generation(engine) as full:  # the engine itself is accepted too
        second = generate(acc.unwrap_model(full), tokenizer, mine, 1, params, **kwargs)
        second_logits = logits(acc.unwrap_model(full))
    expected_second = generate(reference, tokenizer, mine, 1, params, **kwargs)
    trained_logits = logits(reference)
    losses += train(acc, engine, optimizer, tokenizer.pad_token_id, 1.0)  # training still works after it
    result = {
        "first": [r["completion"] for r in first],
        "expected_first": [r["completion"] for r in expected_first],
        "second": [r["completion"] for r in second],
        "expected_second": [r["completion"] for r in expected_second],
        "logits_diff": [
            (first_logits - base_logits).abs().max().item(),
            (second_logits - trained_logits).abs().max().item(),
        ],
        "trained_change": (trained_logits - base_logits).abs().max().item(),
        "hooks": [hooks_before, hooks_inside, hook_counts()],
        "shape_after": list(module.model.embed_tokens.weight.shape),
        "losses": losses,
    }
    Path(f"{out}.rank{acc.process_index}").write_text(json.dumps(result))


def load_case(model_path: str, kind: str, out: str) -> None:
    """Another seed's weights loaded into the partitions, as resume does (full: a state dict through
    `load_full_state`; lora: an adapter file's keys through peft inside `gathered_for_loading`), then an optimizer
    step at learning rate 0: the weights must stay the loaded ones (the optimizer's fp32 master copy was
    refreshed)."""
    from rs_trainer.run.deepspeed import gathered_for_loading, load_full_state

    acc = zero3_accelerator()
    engine, optimizer = prepared(acc, load(model_path, lora=kind == "lora"), lr=0.0)
    torch.manual_seed(123)
    state = {k: torch.randn_like(v) * 0.02 for k, v in full_params(acc, engine).items()}
    module = acc.unwrap_model(engine)
    if kind == "lora":
        from peft import set_peft_model_state_dict

        with gathered_for_loading(module):  # the adapter file names its tensors without the adapter's name
            result = set_peft_model_state_dict(module, {k.replace(".default", ""): v for k, v in state.items()})
        missing, unexpected = [k for k in result.missing_keys if "lora_" in k], result.unexpected_keys
    else:
        missing, unexpected = load_full_state(module, state)
    loaded = full_params(acc, engine)
    train(acc, engine, optimizer, 0, 1.0)
    stepped = full_params(acc, engine)
    result = {
        "count": len(state),
        "missing": missing,
        "unexpected": unexpected,
        "loaded_diff": max((loaded[k] - state[k]).abs().max().item() for k in state),
        "stepped_diff": max((stepped[k] - state[k]).abs().max().item() for k in state),
        "shape_after": list(module.get_input_embeddings().weight.shape),
    }
    Path(f"{out}.rank{acc.process_index}").write_text(json.dumps(result))


def restore_case(model_path: str, kind: str, out: str) -> None:
    """`sft_from: base`: the trainable weights copied at full shape, two training steps, restored, then an optimizer
    step at learning rate 0 (which writes the optimizer's master copy back): the base weights must remain."""
    from rs_trainer.run.deepspeed import restore_trainable_gathered, trainable_state_gathered

    acc = zero3_accelerator()
    engine, optimizer = prepared(acc, load(model_path, lora=kind == "lora"), lr=0.5)
    base = trainable_state_gathered(engine, keep=acc.is_main_process)
    train(acc, engine, optimizer, 0, 1.0, steps=2)
    trained = full_params(acc, engine)
    restore_trainable_gathered(engine, base)
    restored = full_params(acc, engine)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = 0.0  # the next scheduler starts from `initial_lr`
    train(acc, engine, optimizer, 0, 1.0)
    stepped = full_params(acc, engine)
    reference = base if acc.is_main_process else None
    reference = _broadcast(reference)
    result = {
        "count": len(reference),
        "shapes_full": all(v.numel() > 0 for v in reference.values()),
        "trained_diff": max((trained[k] - reference[k]).abs().max().item() for k in reference),
        "restored_diff": max((restored[k] - reference[k]).abs().max().item() for k in reference),
        "stepped_diff": max((stepped[k] - reference[k]).abs().max().item() for k in reference),
    }
    Path(f"{out}.rank{acc.process_index}").write_text(json.dumps(result))


def _broadcast(obj):
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def run_case(*argv: str) -> int:
    """The whole trainer on the ZeRO-3 accelerator; with `RS_KILL_AT` set, SIGKILLed as tests/kill_at.py does."""
    if os.environ.get("RS_KILL_AT"):
        import kill_at

        os.replace = kill_at.replace_or_die
    from rs_trainer.cli import parse_args, run_command
    from rs_trainer.trainer import RejectionSamplingTrainer

    def body():
        args, model_args = parse_args(list(argv))
        trainer = RejectionSamplingTrainer(args, model_args, accelerator=zero3_accelerator())
        trainer.setup()
        trainer.train()
        trainer.cleanup()

    return run_command("rs_trainer", body)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    case, *rest = sys.argv[1:]
    if case == "run":
        sys.exit(run_case(*rest))
    {"prepare": prepare_case, "generate": generate_case, "load": load_case, "restore": restore_case}[case](*rest)
    from helpers import leave_together

    leave_together()
