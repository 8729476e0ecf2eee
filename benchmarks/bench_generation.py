"""Generation: the project's engine against the usual way, on the embedded SmolLM2-135M-Instruct.

Baseline (how TRL's former BestOfNSampler did it): every prompt repeated N times, fixed batches of 8 rows, left
padded, `model.generate` per batch until its longest row stops. Ours: `rs_trainer.phases.generation.generate` with its
defaults (one prefill per prompt shared by its N rows, 64-row batches, finished rows dropped).

Each side runs in its own fresh process (so peak memory is its own), alternating, with the same prompts and
sampling parameters. Useful tokens are completion tokens up to and including the end token.

    python benchmarks/bench_generation.py [--num_prompts 64 --num_samples 8 --max_new_tokens 64 --repeats 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_side(side: str, num_prompts: int, num_samples: int, max_new_tokens: int, seed: int) -> dict:
    import torch
    from _common import PeakRSS
    from transformers import AutoModelForCausalLM

    from rs_trainer.phases.generation import SamplingParams, encode_prompts, generate, render_prompt
    from rs_trainer.run.models import load_tokenizer, resolve_model_path
    from rs_trainer.tasks.arithmetic import make_splits

    path = resolve_model_path("embedded:SmolLM2-135M-Instruct")
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = make_splits(num_prompts, 0, 10, 99, seed)["train"]
    params = SamplingParams(temperature=0.8, top_p=1.0, max_new_tokens=max_new_tokens)
    eos = tok.eos_token_id
    with torch.no_grad():  # page the memory-mapped weights in before measuring
        model(input_ids=torch.tensor([encode_prompts(tok, prompts[:1])[0]]))
    with PeakRSS() as mem:
        start = time.perf_counter()
        if side == "ours":
            out = generate(
                model, tok, prompts, num_samples, params, seed=seed, prompt_ids=encode_prompts(tok, prompts)
            )
            useful = sum(r["completion_tokens"] for r in out)
        else:
            texts = [render_prompt(tok, p["prompt"]) for p in prompts for _ in range(num_samples)]
            useful = 0
            torch.manual_seed(seed)
            for i in range(0, len(texts), 8):
                enc = tok(texts[i : i + 8], return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.no_grad():
                    gen = model.generate(**enc, pad_token_id=tok.pad_token_id, **params.generate_kwargs())
                for row in gen[:, enc["input_ids"].shape[1] :].tolist():
                    useful += row.index(eos) + 1 if eos in row else len(row)
        seconds = time.perf_counter() - start
    return {
        "side": side,
        "useful_tokens": useful,
        "seconds": seconds,
        "tokens_per_s": useful / seconds,
        "peak_extra_mib": mem.extra_mib,
        "peak_rss_mib": mem.peak_mib,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_prompts", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--side", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # child process
        print(json.dumps(run_side(args.side, args.num_prompts, args.num_samples, args.max_new_tokens, 0)))
        return
    from _common import table

    rows = []
    for _ in range(args.repeats):
        for side in ("ours", "baseline"):
            cmd = [
                sys.executable,
                __file__,
                "--side",
                side,
                "--num_prompts",
                str(args.num_prompts),
                "--num_samples",
                str(args.num_samples),
                "--max_new_tokens",
                str(args.max_new_tokens),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(table(rows[-1:]), flush=True)
    ours = [r for r in rows if r["side"] == "ours"]
    base = [r for r in rows if r["side"] == "baseline"]
    tps = sum(r["tokens_per_s"] for r in ours) / len(ours) / (sum(r["tokens_per_s"] for r in base) / len(base))
    mem = max(r["peak_rss_mib"] for r in ours) / max(r["peak_rss_mib"] for r in base)
    extra = max(r["peak_extra_mib"] for r in ours) / max(max(r["peak_extra_mib"] for r in base), 1e-9)
    print()
    print(
        f"workload: M={args.num_prompts} prompts x N={args.num_samples} samples, max_new_tokens="
        f"{args.max_new_tokens}, T=0.8, fp32, embedded SmolLM2-135M-Instruct"
    )
    print(table(rows))
    print(
        f"\nratio ours/baseline: useful tokens/s {tps:.2f}x, peak memory (process RSS) {mem:.2f}x, "
        f"memory added by generation {extra:.2f}x"
    )


if __name__ == "__main__":
    main()
