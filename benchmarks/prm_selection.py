"""A process reward model as the selection rule, end to end on this CPU: trained on step labels from Monte-Carlo
rollouts (Math-Shepherd's method, the verifier as the ground truth), then read by `rs_trainer.rewards.prm` to pick
the best of N worked solutions, against the outcome verifier's pick and a matched-random pick, with its cost.

    .venv/bin/python benchmarks/prm_selection.py [--seeds 0 1] [--train_questions 384] [--test_questions 256]

The task has steps: a + b + c asked as "add step by step", solved in three lines ("7 + 12 = 19", "19 + 5 = 24",
"The answer is 24."). The embedded SmolLM2-135M policy rarely writes such steps, and sampling it on this CPU costs
about 5 s per prompt, so the N candidates come from a stand-in policy written here: each of the two sums is off by
1 to 3 with probability `--p_error` (errors can cancel). Each step is labelled as Math-Shepherd does: `--rollouts`
completions from the prefix that ends at that step (by the same stand-in), label 1 when any reaches the right
answer by `numeric_answer`. The PRM is SmolLM2-135M with a two-label token-classification head
(`AutoModelForTokenClassification`, as TRL's PRMTrainer trains one), fine-tuned with transformers' `Trainer` on
rows laid out exactly as `PRMScorer.encode` reads them (each step, then the tag; the label at the tag's last token).
Selection is on held-out questions: best-of-N by the PRM (`aggregate: min`, ties at random), the verifier's pick
(pass@N) and one candidate drawn at random per question (the matched-random control).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rs_trainer.rewards import resolve_scorer
from rs_trainer.rewards.verifiers import numeric_answer
from rs_trainer.run.models import resolve_model_path

ERRORS = (-3, -2, -1, 1, 2, 3)


def questions(rng: random.Random, count: int, taken: set) -> list[tuple[int, int, int]]:
    out = []
    while len(out) < count:
        q = (rng.randint(1, 20), rng.randint(1, 20), rng.randint(1, 20))
        if q not in taken:
            taken.add(q)
            out.append(q)
    return out


def prompt(q) -> list[dict]:
    a, b, c = q
    return [{"role": "user", "content": f"What is {a} + {b} + {c}? Add step by step, one sum per line."}]


def continue_from(q, steps: list[str], rng: random.Random, p_error: float) -> list[str]:
    """The stand-in policy: the worked solution's remaining lines after `steps`, each sum off with `p_error`."""
    a, b, c = q
    steps = list(steps)
    if len(steps) == 0:
        s1 = a + b + (rng.choice(ERRORS) if rng.random() < p_error else 0)
        steps.append(f"{a} + {b} = {s1}")
    s1 = int(steps[0].rsplit("=", 1)[1])
    if len(steps) == 1:
        s2 = s1 + c + (rng.choice(ERRORS) if rng.random() < p_error else 0)
        steps.append(f"{s1} + {c} = {s2}")
    s2 = int(steps[1].rsplit("=", 1)[1])
    if len(steps) == 2:
        steps.append(f"The answer is {s2}.")
    return steps


def right(q, steps: list[str]) -> bool:
    completion = [{"role": "assistant", "content": "\n".join(steps)}]
    return numeric_answer([prompt(q)], [completion], answer=[str(sum(q))])[0] == 1.0


def step_labels(q, steps: list[str], rng: random.Random, p_error: float, rollouts: int) -> list[int]:
    """Math-Shepherd's hard estimate: 1 when any of `rollouts` completions from the prefix ending at the step is
    right by the verifier (the last step: the solution itself)."""
    labels = []
    for k in range(1, len(steps) + 1):
        if k == len(steps):
            labels.append(int(right(q, steps)))
        else:
            tries = (continue_from(q, steps[:k], rng, p_error) for _ in range(rollouts))
            labels.append(int(any(right(q, t) for t in tries)))
    return labels


def train_prm(rows: list[dict], out: Path, seed: int, epochs: int) -> Path:
    """SmolLM2-135M with a fresh two-label head, fine-tuned on the labelled steps with transformers' Trainer."""
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    base = str(resolve_model_path("embedded:SmolLM2-135M-Instruct"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(base, num_labels=2)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)  # untrained, so that PRMScorer.encode can lay out the rows from the folder
    tokenizer.save_pretrained(out)
    layout = resolve_scorer({"kind": "prm", "model": str(out), "name": f"layout-{seed}"})
    encoded = layout.encode([r["prompt"] for r in rows], [[{"role": "assistant", "content": r["text"]}] for r in rows])
    data = []
    for row, enc in zip(rows, encoded, strict=True):
        labels = [-100] * len(enc["input_ids"])
        for position, label in zip(enc["read_at"], row["labels"], strict=True):
            labels[position] = label
        data.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=16,
        num_train_epochs=epochs,
        learning_rate=1e-4,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        logging_steps=20,
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data, data_collator=DataCollatorForTokenClassification(tokenizer)
    )
    trainer.train()
    model.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train_questions", type=int, default=384)
    parser.add_argument("--train_candidates", type=int, default=4)
    parser.add_argument("--test_questions", type=int, default=256)
    parser.add_argument("--n", type=int, default=8, help="candidates per held-out question")
    parser.add_argument("--p_error", type=float, default=0.3)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    ns = parser.parse_args()
    results = []
    for seed in ns.seeds:
        rng = random.Random(seed)
        taken: set = set()
        train_q, test_q = questions(rng, ns.train_questions, taken), questions(rng, ns.test_questions, taken)
        rows = []
        for q in train_q:
            for _ in range(ns.train_candidates):
                steps = continue_from(q, [], rng, ns.p_error)
                labels = step_labels(q, steps, rng, ns.p_error, ns.rollouts)
                rows.append({"prompt": prompt(q), "text": "\n".join(steps), "labels": labels})
        positive = statistics.fmean(label for r in rows for label in r["labels"])
        start = time.perf_counter()
        folder = train_prm(rows, Path(tempfile.mkdtemp(prefix=f"prm-{seed}-")), seed, ns.epochs)
        train_seconds = time.perf_counter() - start
        scorer = resolve_scorer({"kind": "prm", "model": str(folder), "aggregate": "min", "name": f"prm-{seed}"})
        candidates = [(q, continue_from(q, [], rng, ns.p_error)) for q in test_q for _ in range(ns.n)]
        start = time.perf_counter()
        scores = scorer(
            [prompt(q) for q, _ in candidates],
            [[{"role": "assistant", "content": "\n".join(s)}] for _, s in candidates],
        )
        score_seconds = time.perf_counter() - start
        truth = [right(q, s) for q, s in candidates]
        step_truth = [
            step_labels(q, s, random.Random(i), ns.p_error, ns.rollouts) for i, (q, s) in enumerate(candidates)
        ]
        step_pred = [[int(p > 0.5) for p in steps] for steps in scorer.step_scores]
        step_acc = statistics.fmean(
            p == t for ps, ts in zip(step_pred, step_truth, strict=True) for p, t in zip(ps, ts, strict=True)
        )
        pick = random.Random(seed + 1000)
        prm_pick, random_pick, oracle = [], [], []
        for i in range(0, len(candidates), ns.n):
            group = list(zip(scores[i : i + ns.n], truth[i : i + ns.n], strict=True))
            top = max(s for s, _ in group)
            prm_pick.append(pick.choice([t for s, t in group if s == top]))
            random_pick.append(pick.choice(group)[1])
            oracle.append(any(t for _, t in group))
        results.append(
            {
                "seed": seed,
                "prm": statistics.fmean(prm_pick),
                "random": statistics.fmean(random_pick),
                "verifier": statistics.fmean(oracle),
                "right": statistics.fmean(truth),
                "step_acc": step_acc,
                "positive": positive,
                "train_s": train_seconds,
                "per_1000_s": 1000 * score_seconds / len(candidates),
            }
        )
        print(results[-1], flush=True)
    print(f"{ns.test_questions} held-out questions x {ns.n} candidates, {len(ns.seeds)} seed(s); PRM trained on "
          f"{ns.train_questions} x {ns.train_candidates} labelled solutions, {ns.epochs} epochs")  # fmt: skip
    for key in ("verifier", "prm", "random", "right", "step_acc", "positive", "train_s", "per_1000_s"):
        values = [r[key] for r in results]
        spread = f" (seeds: {', '.join(f'{v:.3f}' for v in values)})" if len(values) > 1 else ""
        print(f"{key}: {statistics.fmean(values):.3f}{spread}")


if __name__ == "__main__":
    sys.exit(main())
