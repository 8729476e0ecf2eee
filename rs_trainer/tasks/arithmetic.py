"""Addition questions with ground-truth answers, generated deterministically from a seed.

Train and eval splits never share an (a, b) pair, so held-out accuracy measures generalisation, not recall.
"""

from __future__ import annotations

from rs_trainer.run import seeds

SUFFIX = "Give only the final number."
VERIFIER = "numeric_answer"  # the completion's final number against `answer` (rs_trainer.rewards.verifiers)


def splits(args) -> dict[str, list[dict]]:
    """The task's splits for a recipe's `task_*` keys and `seed`."""
    return make_splits(
        args.task_num_train, args.task_num_eval, args.task_min_operand, args.task_max_operand, args.seed
    )


def make_splits(num_train: int, num_eval: int, lo: int, hi: int, seed: int) -> dict[str, list[dict]]:
    """Return `{"train": rows, "test": rows}`; each row has `prompt_id`, `prompt` (chat messages) and `answer`.

    Example: `make_splits(2, 1, 1, 3, 0)` draws 3 distinct pairs from {1,2,3}², e.g. ("What is 2 + 3? ...", "5").
    """
    pairs = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]
    if num_train + num_eval > len(pairs):
        raise ValueError(
            f"builtin:arithmetic has only {len(pairs)} distinct pairs in [{lo}, {hi}]; lower `task_num_train` + "
            f"`task_num_eval` ({num_train + num_eval}) or widen `task_min_operand`/`task_max_operand`."
        )
    rng = seeds.arithmetic_rng(seed, lo, hi)
    chosen = rng.sample(pairs, num_train + num_eval)

    def row(split: str, i: int, a: int, b: int) -> dict:
        return {
            "prompt_id": f"{split}-{i:05d}",
            "prompt": [{"role": "user", "content": f"What is {a} + {b}? {SUFFIX}"}],
            "answer": str(a + b),
        }

    return {
        "train": [row("train", i, a, b) for i, (a, b) in enumerate(chosen[:num_train])],
        "test": [row("test", i, a, b) for i, (a, b) in enumerate(chosen[num_train:])],
    }
