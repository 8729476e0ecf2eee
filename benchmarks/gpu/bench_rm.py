"""Reward-model scoring in bf16 on the GPU: length-sorted batches under a token budget (`RewardModelScorer`, ours)
against fixed-size batches in arrival order, each padded to its longest, with the same largest batch in padded tokens
(budget / longest input rows). Both sides run the scorer's own forward on the same encoded inputs of uniformly
drawn lengths (`--min_tokens`..`--max_tokens`), so tokenization is left out and the ratio is the batching's alone.
The sides alternate `--repeats` times; each side's best run counts.

    python benchmarks/gpu/bench_rm.py --model /tmp/rs_gpu/models/llama-3.2-1b/reward_model --out /tmp/rs_gpu/parts \
        [--num_samples 1024 --min_tokens 32 --max_tokens 1024 --max_tokens_per_batch 16384] [--smoke]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import pick_device, sync, write_result  # noqa: E402


def encoded_rows(vocab: int, n: int, lo: int, hi: int, seed: int = 0) -> list[dict]:
    """Token lists of lengths drawn uniformly from [lo, hi]; ids from 3 up, clear of the special tokens."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        rows.append({"input_ids": [rng.randrange(3, vocab) for _ in range(length)], "attention_mask": [1] * length})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--num_samples", type=int, default=1024)
    parser.add_argument("--min_tokens", type=int, default=32)
    parser.add_argument("--max_tokens", type=int, default=1024)
    parser.add_argument("--max_tokens_per_batch", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.num_samples, args.min_tokens, args.max_tokens, args.max_tokens_per_batch = 16, 8, 64, 256
    import torch

    from rs_trainer.rewards.reward_model import RewardModelScorer

    device = pick_device(args.smoke)
    scorer = RewardModelScorer(args.model, device=str(device), max_tokens_per_batch=args.max_tokens_per_batch)
    dtype = str(next(scorer.model.parameters()).dtype)
    rows = encoded_rows(len(scorer.tokenizer), args.num_samples, args.min_tokens, args.max_tokens)
    real = sum(len(r["input_ids"]) for r in rows)
    batch_rows = max(1, args.max_tokens_per_batch // args.max_tokens)
    padded: list[int] = []
    forward = scorer.forward

    def counting(batch):
        padded.append(len(batch) * max(len(r["input_ids"]) for r in batch))
        return forward(batch)

    scorer.forward = counting

    def arrival():
        return [s for i in range(0, len(rows), batch_rows) for s in scorer.forward(rows[i : i + batch_rows])]

    sides = {"sorted": lambda: scorer.score_encoded(rows), "arrival": arrival}
    with torch.no_grad():
        scorer.score_encoded(rows[:4])  # warm up
        seconds, scores, padded_tokens = {k: [] for k in sides}, {}, {}
        for r in range(args.repeats):
            for name in sides if r % 2 == 0 else reversed(list(sides)):
                padded.clear()
                sync(device)
                start = time.perf_counter()
                scores[name] = sides[name]()
                sync(device)
                seconds[name].append(time.perf_counter() - start)
                padded_tokens[name] = sum(padded)
    result = {"workload": vars(args) | {"baseline_rows_per_batch": batch_rows, "dtype": dtype, "real_tokens": real}}
    for name in sides:
        best = min(seconds[name])
        result[name] = {
            "best_s": best,
            "seconds": seconds[name],
            "padded_tokens": padded_tokens[name],
            "padding_fraction": 1 - real / padded_tokens[name],
            "real_tokens_per_s": real / best,
        }
        print(
            f"{name}: best {best:.3f} s, {real / best:,.0f} real tokens/s, padding "
            f"{result[name]['padding_fraction']:.1%} of {padded_tokens[name]:,} computed tokens",
            flush=True,
        )
    result["ratio_sorted_over_arrival"] = (
        result["sorted"]["real_tokens_per_s"] / result["arrival"]["real_tokens_per_s"]
    )
    result["max_score_difference"] = max(abs(a - b) for a, b in zip(scores["sorted"], scores["arrival"], strict=True))
    print(
        f"ratio sorted / arrival: {result['ratio_sorted_over_arrival']:.2f}x real tokens/s; scores agree within "
        f"{result['max_score_difference']:.3g} ({dtype})",
        flush=True,
    )
    write_result(args.out, "reward_model", {**result, "smoke": args.smoke})


if __name__ == "__main__":
    main()
