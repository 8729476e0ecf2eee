"""`math_answer` in its killable worker pool against the same checks in the calling process, on GSM8K-style answers.

Both sides check the same (ground truth, completion) pairs with the same function (`check_math_answer`: math-verify's
`parse` and `verify`): the baseline calls it in a loop in this process, as `math_answer` did before the pool; the
pool sends each pair to one of `--workers` processes and reads the result back. The pool is started (its workers
warmed up) before timing, as it is after a run's first round. Sides alternate `--repeats` times; each side's best
run counts, the one least slowed by other work on a shared machine.

    python benchmarks/bench_verifier_pool.py [--num_samples 400 --workers 2 --repeats 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table  # noqa: E402


def pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """GSM8K-like answers: a worked line ending in the number, right half the time, some in LaTeX."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        truth = str(a * b)
        got = a * b if rng.random() < 0.5 else a * b + rng.randint(1, 9)
        text = rng.choice(
            [f"{a} x {b} = {got}. The answer is {got}.", f"So she has $\\boxed{{{got}}}$ apples.", f"#### {got}"]
        )
        out.append((truth, text))
    return out


def main() -> None:
    from rs_trainer.rewards.pool import KillablePool
    from rs_trainer.rewards.verifiers import check_math_answer, warm_math_verify

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_samples", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    ns = parser.parse_args()
    items = pairs(ns.num_samples)
    warm_math_verify()
    pool = KillablePool(check_math_answer, ns.workers, timeout=30.0, warmup=warm_math_verify)
    pool.map(items[:4])  # started and warmed up
    best = {"in process": float("inf"), f"pool of {ns.workers}": float("inf")}
    results = {}
    for _ in range(ns.repeats):
        start = time.perf_counter()
        results["in process"] = [check_math_answer(item) for item in items]
        best["in process"] = min(best["in process"], time.perf_counter() - start)
        start = time.perf_counter()
        results[f"pool of {ns.workers}"], lost = pool.map(items)
        best[f"pool of {ns.workers}"] = min(best[f"pool of {ns.workers}"], time.perf_counter() - start)
        assert not lost
    pool.close()
    assert results["in process"] == results[f"pool of {ns.workers}"], "the two sides must agree on every sample"
    base = best["in process"]
    rows = [
        {"side": side, "samples/s": f"{ns.num_samples / s:.0f}", "time": f"{s:.2f} s", "ratio": f"{base / s:.2f}x"}
        for side, s in best.items()
    ]
    print(table(rows))


if __name__ == "__main__":
    main()
