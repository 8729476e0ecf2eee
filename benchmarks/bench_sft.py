"""SFT: the project's step (`rs_trainer.phases.sft.train_steps`) against `trl.SFTTrainer` on the same work.

Same model (embedded SmolLM2-135M-Instruct), same LoRA config (r=16, alpha=32, all linear layers, no dropout,
identical initial adapter), same pre-tokenized prompt-completion data with the loss on completion tokens only,
same batch size, order (sequential), AdamW, learning rate and clipping. TRL's gradient checkpointing (its default)
is turned off so both sides do the same arithmetic. Sides alternate; each prints completion tokens per second and
its first losses, and the script ends with the ratio ours/TRL and the largest first-step loss difference.

    python benchmarks/bench_sft.py [--steps 16 --batch_size 8 --repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_examples(tokenizer, n: int, seed: int = 0) -> list[dict]:
    """Arithmetic questions with worked answers of varied length, tokenized as the trainer tokenizes them."""
    import random

    from rs_trainer.phases.generation import encode_prompts
    from rs_trainer.phases.sft import build_example, tokenize_completion
    from rs_trainer.tasks.arithmetic import make_splits

    rng = random.Random(seed)
    prompts = make_splits(n, 0, 10, 99, seed)["train"]
    prompt_ids = encode_prompts(tokenizer, prompts)
    examples = []
    for p, ids in zip(prompts, prompt_ids, strict=True):
        a, b = (int(x) for x in p["prompt"][0]["content"].split("?")[0].split("is ")[1].split(" + "))
        text = (
            f"{a} + {b} = {a + b}"
            if rng.random() < 0.5
            else f"Adding {a} and {b} step by step: " * rng.randint(1, 4) + str(a + b)
        )
        examples.append(build_example(ids, tokenize_completion(tokenizer, text, True, tokenizer.eos_token_id), 2048))
    return examples


def lora_model(path, seed: int = 0):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def run_ours(path, tokenizer, examples, steps: int, batch_size: int, lr: float, grad_accum: int = 1) -> dict:
    import torch
    from accelerate import Accelerator
    from transformers import get_scheduler

    from rs_trainer.phases.sft import train_steps

    acc = Accelerator(cpu=True)
    model = lora_model(path)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model, opt = acc.prepare(model, opt)
    sched = get_scheduler("constant", opt)
    # Sequential, as TRL's side: step i takes the next `grad_accum` micro-batches of `batch_size` examples.
    micro = [examples[i * batch_size : (i + 1) * batch_size] for i in range(steps * grad_accum)]
    plan = [micro[i * grad_accum : (i + 1) * grad_accum] for i in range(steps)]
    start = time.perf_counter()
    losses, tokens = train_steps(acc, model, opt, sched, plan, tokenizer.pad_token_id, 1.0)
    seconds = time.perf_counter() - start
    return {"side": "ours", "tokens": tokens, "seconds": seconds, "losses": losses}


def run_trl(
    path, tokenizer, examples, steps: int, batch_size: int, lr: float, out_dir: str, grad_accum: int = 1
) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    config = SFTConfig(
        output_dir=out_dir,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        gradient_checkpointing=False,
        train_sampling_strategy="sequential",
        dataloader_drop_last=False,
        seed=0,
        bf16=False,
        max_length=None,
    )
    trainer = SFTTrainer(model=lora_model(path), args=config, train_dataset=data, processing_class=tokenizer)

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.start

    timer = Timer()
    trainer.add_callback(timer)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = sum(sum(1 for t in e["labels"][1:] if t != -100) for e in examples[: steps * batch_size * grad_accum])
    return {"side": "trl.SFTTrainer", "tokens": tokens, "seconds": timer.seconds, "losses": losses}


def main():
    import tempfile

    from _common import table

    from rs_trainer.run.models import load_tokenizer, resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    args = parser.parse_args()
    path = resolve_model_path("embedded:SmolLM2-135M-Instruct")
    tokenizer = load_tokenizer(path)
    examples = make_examples(tokenizer, args.steps * args.batch_size)
    rows, results = [], []
    for _ in range(args.repeats):
        for side in ("ours", "trl"):
            with tempfile.TemporaryDirectory() as tmp:
                if side == "ours":
                    res = run_ours(path, tokenizer, examples, args.steps, args.batch_size, args.lr)
                else:
                    res = run_trl(path, tokenizer, examples, args.steps, args.batch_size, args.lr, tmp)
            results.append(res)
            rows.append(
                {
                    "side": res["side"],
                    "tokens": res["tokens"],
                    "seconds": res["seconds"],
                    "tokens_per_s": res["tokens"] / res["seconds"],
                    "loss_step1": res["losses"][0],
                    "loss_step3": res["losses"][2],
                }
            )
            print(table(rows[-1:]), flush=True)
    ours = [r["tokens_per_s"] for r in rows if r["side"] == "ours"]
    trl_ = [r["tokens_per_s"] for r in rows if r["side"] != "ours"]
    first = next(r for r in results if r["side"] == "ours")["losses"][:5]
    ref = next(r for r in results if r["side"] != "ours")["losses"][:5]
    diff = max(abs(a - b) for a, b in zip(first, ref, strict=True))
    print(
        f"\nworkload: {args.steps} steps x batch {args.batch_size}, LoRA r=16 all-linear, fp32, embedded SmolLM2-135M"
    )
    print(table(rows))
    print(f"\nfirst 5 losses ours: {[round(x, 4) for x in first]}\nfirst 5 losses TRL:  {[round(x, 4) for x in ref]}")
    print(f"max |loss difference| over the first 5 steps: {diff:.2e}")
    print(f"ratio ours/trl.SFTTrainer: completion tokens/s {sum(ours) / len(ours) / (sum(trl_) / len(trl_)):.2f}x")


if __name__ == "__main__":
    main()
