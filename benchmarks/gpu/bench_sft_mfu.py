"""SFT step throughput and MFU, LoRA and full fine-tuning, at sequence length 512, bf16, through the trainer's own
step (`rs_trainer.phases.sft.train_steps`: loss on completion tokens, AdamW, clipping) on a random-weight model.

Model FLOPs per token: 6 x parameters for full fine-tuning (forward 2, backward 4) and about 4 x parameters for
LoRA (the frozen weights need no weight gradients; the adapter's own FLOPs are ignored). Attention's score FLOPs are
left out, as in the usual 6N count. MFU = model FLOPs per second / the measured bf16 matmul peak (`peaks.py`).
Every token of a sequence is processed, so tokens = rows x 512 (the loss covers the last 384, the completion).

    python benchmarks/gpu/bench_sft_mfu.py --model /tmp/rs_gpu/models/llama-3.2-1b/policy --out /tmp/rs_gpu/parts \
        [--peaks /tmp/rs_gpu/parts/peaks.json] [--modes lora,full] [--batch_size 8] [--smoke]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_peaks, param_count, pick_device, sync, write_result  # noqa: E402


def examples(vocab: int, rows: int, seq_len: int, prompt_len: int, seed: int = 0) -> list[dict]:
    from rs_trainer.phases.sft import build_example

    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        ids = [rng.randrange(3, vocab) for _ in range(seq_len)]
        out.append(build_example(ids[:prompt_len], ids[prompt_len:], seq_len))
    return out


def measure(mode: str, args, device, peaks: dict) -> dict:
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_scheduler

    from rs_trainer.phases.sft import train_steps

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to(device)
    params = param_count(model)
    if mode == "lora":
        config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision="no" if device.type == "cpu" else "bf16")
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5 if mode == "full" else 2e-4)
    model, opt = acc.prepare(model, opt)
    sched = get_scheduler("constant", opt)
    data = examples(model.config.vocab_size, args.batch_size, args.seq_len, args.seq_len // 4)
    step = [[data]]  # one optimizer step = one micro-batch of `batch_size` sequences
    train_steps(acc, model, opt, sched, step * args.warmup, 0, 1.0)
    sync(device)
    start = time.perf_counter()
    losses, _ = train_steps(acc, model, opt, sched, step * args.steps, 0, 1.0)
    sync(device)
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch_size * args.seq_len
    per_token = (6 if mode == "full" else 4) * params
    flops = per_token * tokens / seconds
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {
        "mode": mode,
        "parameters": params,
        "trainable_parameters": param_count(model, trainable_only=True),
        "steps": args.steps,
        "rows_per_step": args.batch_size,
        "seq_len": args.seq_len,
        "tokens": tokens,
        "seconds": seconds,
        "step_seconds": seconds / args.steps,
        "tokens_per_s": tokens / seconds,
        "flops_per_token": per_token,
        "model_flops_per_s": flops,
        "mfu": flops / peaks["matmul_flops_per_s"],
        "peak_memory_gib": peak_mem,
        "losses": losses,
        "arithmetic": (
            f"{'6' if mode == 'full' else '4'} x {params:,} params x {tokens:,} tokens / {seconds:.3f} s = "
            f"{flops / 1e12:.2f} TFLOP/s; / {peaks['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s peak = "
            f"{flops / peaks['matmul_flops_per_s']:.1%} MFU"
        ),
    }
    print(f"{mode}: {result['tokens_per_s']:,.0f} tokens/s, {result['arithmetic']}", flush=True)
    del model, opt, acc
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--peaks", default=None)
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.batch_size, args.seq_len, args.steps, args.warmup = 2, 32, 2, 1
    device = pick_device(args.smoke)
    peaks = load_peaks(args.peaks, device, args.smoke)
    runs = []
    for mode in args.modes.split(","):
        try:
            runs.append(measure(mode, args, device, peaks))
        except Exception as err:  # out of memory in one mode must not lose the other
            runs.append({"mode": mode, "error": f"{type(err).__name__}: {err}"[:500]})
            print(f"{mode}: FAILED {runs[-1]['error']}", flush=True)
        write_result(args.out, "sft", {"runs": runs, "smoke": args.smoke})  # after each mode: a hang loses one


if __name__ == "__main__":
    main()
