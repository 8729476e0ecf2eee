"""An LLM judge as the selection rule, on one round's real samples: how often it agrees with the verifier, and
what a best-of-N pick by the judge keeps, against the matched-random pick (one sample per prompt, drawn at random)
and the verifier's own pick, with the judge's cost per 1000 samples.

    .venv/bin/python benchmarks/judge_selection.py --generations outputs/<run>/round_0/generations.jsonl \\
        [--model embedded:SmolLM2-135M-Instruct] [--seeds 0 1]

The judge is `rs_trainer.rewards.judge` with its default template (yes/no) behind a real `transformers serve` on
127.0.0.1 started here; `--base_url` uses a server you started instead (`--score yes_prob` needs one that returns
log-probabilities, such as vLLM's: the judge's P(yes) / (P(yes) + P(no)), a graded score, agreement read at 0.5).
The verifier's verdict is each row's `verified_reward`, else its `reward` (the run's `numeric_answer`). Ties
between samples the judge scores alike are broken at random, seeded; the matched-random pick takes one sample per
prompt of the same prompts.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import Server  # noqa: E402

from rs_trainer.rewards import resolve_scorers, score  # noqa: E402
from rs_trainer.run.io import read_jsonl  # noqa: E402
from rs_trainer.run.models import resolve_model_path  # noqa: E402


def verdict(row: dict) -> float:
    return float((row.get("verified_reward", row["reward"]) or 0.0) >= 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", required=True)
    parser.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    parser.add_argument("--base_url", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--score", default="yes_no", help="yes_no, or yes_prob (needs a server with logprobs: vLLM)")
    ns = parser.parse_args()
    rows = read_jsonl(ns.generations)
    model = str(resolve_model_path(ns.model))
    tmp = Path(tempfile.mkdtemp(prefix="judge-bench-"))
    server = None if ns.base_url else Server(tmp / "server").start()
    try:
        entry = {"kind": "judge", "name": "judge", "base_url": ns.base_url or server.base_url, "model": model}
        entry["score"] = ns.score
        import os

        os.environ["RS_TRAINER_CACHE"] = str(tmp / "cache")  # every sample asked, none from an earlier run
        scorers, weights = resolve_scorers("reward_funcs", [entry], None, None, rows, "generations")
        start = time.perf_counter()
        judged = score(rows, scorers, weights)
        seconds = time.perf_counter() - start
    finally:
        if server is not None:
            server.stop()
    opinions = [j["reward"] for j in judged]
    truth = [verdict(r) for r in rows]
    given = [(float(o >= 0.5), t) for o, t in zip(opinions, truth, strict=True) if o is not None]
    by_prompt = defaultdict(list)
    for r, o in zip(rows, opinions, strict=True):
        by_prompt[r["prompt_id"]].append((o if o is not None else -1.0, verdict(r)))
    picks = {"judge best-of-N": [], "matched random": []}
    for seed in ns.seeds:
        rng = random.Random(seed)
        for group in by_prompt.values():
            top = max(o for o, _ in group)
            picks["judge best-of-N"].append(rng.choice([t for o, t in group if o == top]))
            picks["matched random"].append(rng.choice(group)[1])
    print(f"{len(rows)} samples of {len(by_prompt)} prompts from {ns.generations}; judge {ns.model}")
    print(f"judge replies read: {len(given)}/{len(rows)} ({len(rows) - len(given)} unreadable: no opinion)")
    if given:
        agree = statistics.fmean(o == t for o, t in given)
        print(f"agreement with the verifier: {agree:.3f} (says yes to {statistics.fmean(o for o, _ in given):.3f}; "
              f"right samples: {statistics.fmean(t for _, t in given):.3f})")  # fmt: skip
    print(f"cost: {1000 * seconds / len(rows):.1f} s per 1000 samples ({seconds:.0f} s in all)")
    print(f"verifier's pick (pass@N): {statistics.fmean(any(t for _, t in g) for g in by_prompt.values()):.3f}")
    for name, values in picks.items():
        print(f"{name}: right {statistics.fmean(values):.3f} over {len(values)} picks ({len(ns.seeds)} seeds)")


if __name__ == "__main__":
    main()
