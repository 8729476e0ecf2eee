"""The cost of the drift measurement (`rs/kl_ref`, `rs/entropy`) against sampling, and what `kl_samples` buys.

On a finished default run, round 1's own samples are scored by the round-0 adapter (the weights that sampled them)
against the base model, as the trainer does: once on every sample, once on a seeded draw of `--kl_samples`. It
prints seconds, KL and entropy of both, the draw's share of the time, and round 1's generation seconds from its
metrics.json (the same samples, sampled by the same weights, in the same run of this machine only if it was idle).

    python benchmarks/bench_kl.py --run outputs/smollm2-arithmetic-lora [--kl_samples 128]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default="outputs/smollm2-arithmetic-lora")
    parser.add_argument("--kl_samples", type=int, default=128)
    args = parser.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rs_trainer.phases.divergence import kl_and_entropy
    from rs_trainer.phases.generation import encode_prompts
    from rs_trainer.phases.sft import build_example, tokenize_completion
    from rs_trainer.run.io import read_jsonl
    from rs_trainer.run.models import convert_embedded, load_tokenizer

    torch.manual_seed(0)
    run = Path(args.run)
    base = convert_embedded("SmolLM2-135M-Instruct")
    tokenizer = load_tokenizer(str(base))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "round_0" / "checkpoint")
    rows = [r for r in read_jsonl(run / "round_1" / "generations.jsonl") if not r.get("rationalized")]
    prompt_ids = dict(zip([r["prompt_id"] for r in rows], encode_prompts(tokenizer, rows), strict=True))
    examples = [
        build_example(
            prompt_ids[r["prompt_id"]],
            tokenize_completion(tokenizer, r["completion"], r["finished"], tokenizer.eos_token_id),
            4096,
        )
        for r in rows
    ]
    draw = sorted(random.Random(0).sample(range(len(examples)), min(args.kl_samples, len(examples))))
    results = {}
    for name, subset in ((f"draw of {len(draw)}", [examples[i] for i in draw]), ("all", examples)):
        start = time.perf_counter()
        sums = kl_and_entropy(model, subset, tokenizer.pad_token_id)
        seconds = time.perf_counter() - start
        results[name] = seconds
        kl, entropy = sums["kl_sum"] / sums["samples"], sums["entropy_sum"] / sums["tokens"]
        print(f"{name:>14}: {len(subset)} samples, {seconds:.1f} s, KL {kl:.3f} nats/sample, entropy {entropy:.3f}")
    metrics = json.loads((run / "round_1" / "metrics.json").read_text())
    (draw_s, all_s) = results.values()
    print(f"draw / all: {draw_s / all_s:.3f} of the time; round 1 generated in {metrics['timing/generate']:.1f} s")


if __name__ == "__main__":
    main()
