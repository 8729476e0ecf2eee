"""Issue 24's sweep: variants of the default recipe (recipes/smollm2/arithmetic_lora.yaml) and the plain loop
(benchmarks/plain_loop.py), 2 seeds each, every one evaluated on the held-out set and the three other-forms sets
(`phrasings`, `words`, `stories`, 64 questions each), then one table.

    .venv/bin/python benchmarks/sweep_generalization.py run [--jobs 2] [--only default,top-k-50]
    .venv/bin/python benchmarks/sweep_generalization.py table > table.md

Runs go to outputs/sweep/<variant>-s<seed>; a run with a summary.json is skipped, so a stopped sweep goes on where
it was. `--jobs 2` runs two at once, each on one thread (OMP_NUM_THREADS=1), so both cores stay busy and every run
sees one core beside one other run: times compare within the sweep, not with `make demo`'s. Drift (`kl_to_base`) is
off: it does not change what is trained. The base model's evaluation is the same for every variant of a seed; it is
computed by the first run of that seed and copied into the others' folders (`base_eval.json`).

Work that would repeat the default run's is taken from it, through the trainer's own resume (a folder without
`run_config.json` is not checked against a config): variants that sample round 0 as the default does (`SAME_SAMPLES`)
start from its round-0 samples, unscored, as if a run had been killed after generating them; `T-0.8`, whose round 0
is the default's in every key, starts from its finished round 0. Their time adds the default's for what was taken.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rs_trainer.run.io import read_jsonl, write_jsonl
from rs_trainer.run.layout import RunLayout

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "outputs" / "sweep"
RECIPE = "recipes/smollm2/arithmetic_lora.yaml"
SEEDS = (42, 43)
SETS = ("heldout", "phrasings", "words", "stories")
# `--top_k 0`: the sweep measured the recipe as it was before it (top-k off, commit d9690e4); since then the
# recipe samples with top-k 50, the sweep's winner, and this key keeps the sweep what it was.
COMMON = ["--task_num_eval_ood", "64", "--kl_to_base", "off", "--report_to", "none", "--top_k", "0"]
# name -> (what it changes, extra command-line keys). Every variant generates the same 96 x 8 = 768 samples a
# round (192 x 4 the same number), so they compare at (nearly) equal generated tokens.
VARIANTS = {
    "default": ("the recipe before the sweep: top-k off, T 0.8 then 0.7, drop truncated, 96 x 8, 2 epochs", []),
    # the variants below change these keys of `default`, and only them
    "top-k-50": ("sampling top-k 50 (transformers' default)", ["--top_k", "50"]),
    "min-p-0.1": ("sampling min-p 0.1", ["--min_p", "0.1"]),
    "T-0.8": ("temperature 0.8 both rounds", ["--temperature", "0.8"]),
    "keep-truncated": ("`drop_truncated: false`", ["--drop_truncated", "false"]),
    "192x4": ("192 prompts x 4 samples a round", ["--prompts_per_round", "192", "--num_generations", "4"]),
    "4-distinct": (
        "up to 4 distinct right answers a prompt (`top_k_per_prompt`, `k_per_prompt: 4`, `dedupe: normalised`)",
        ["--selection", "top_k_per_prompt", "--k_per_prompt", "4", "--dedupe", "normalised"],
    ),
    "epochs-1": ("1 SFT epoch a round", ["--num_train_epochs", "1"]),
    "epochs-3": ("3 SFT epochs a round", ["--num_train_epochs", "3"]),
    "rest-em": (
        "`sft_from: base` + `pool_previous_rounds` (ReST-EM)",
        ["--sft_from", "base", "--pool_previous_rounds", "true"],
    ),
    "top-k-50+192x4": (
        "the two best single changes together: top-k 50, 192 x 4",
        ["--top_k", "50", "--prompts_per_round", "192", "--num_generations", "4"],
    ),
}
PLAIN = "plain-loop"
SAME_SAMPLES = ("keep-truncated", "4-distinct", "epochs-1", "epochs-3", "rest-em")
SAME_ROUND_0 = ("T-0.8",)
SCORING_FIELDS = ("reward", "rewards", "filtered_out", "selected")


def seed_from_default(name: str, seed: int, out: Path) -> None:
    """Copy into `out` what the variant shares with the finished default run of its seed (see the module doc)."""
    default = OUT / f"default-s{seed}"
    if name in ("default", PLAIN) or not (default / "summary.json").exists() or out.exists():
        return
    src, dst = RunLayout(default), RunLayout(out)
    out.mkdir(parents=True)
    shutil.copy(src.base_eval, dst.base_eval)
    if name in SAME_ROUND_0:
        shutil.copytree(src.round(0), dst.round(0))
    elif name in SAME_SAMPLES:
        dst.shards(0).mkdir(parents=True)
        rows = [{k: v for k, v in row.items() if k not in SCORING_FIELDS} for row in read_jsonl(src.generations(0))]
        write_jsonl(dst.shard(0, 0), rows)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def command(name: str, seed: int, out: Path) -> list[str]:
    if name == PLAIN:
        return [sys.executable, "benchmarks/plain_loop.py", "--seed", str(seed), "--out", str(out)]
    launch = [str(ROOT / ".venv/bin/accelerate"), "launch", "--config_file", "accelerate_configs/cpu.yaml"]
    return [*launch, "-m", "rs_trainer", "--config", RECIPE, "--output_dir", str(out), "--seed", str(seed),
            *COMMON, *VARIANTS[name][1]]  # fmt: skip


def run(names: list[str], jobs: int, running_pids: list[int], skip: list[str]) -> None:
    """Run the missing (variant, seed) pairs, `jobs` at a time; `running_pids` (runs an earlier sweep started and
    still running) hold slots until they end, and `skip` names their `<variant>-s<seed>`. The plain loop goes first:
    it is the longest."""
    order = sorted(names, key=lambda n: n != PLAIN)
    queue = [(n, s) for s in SEEDS for n in order if f"{n}-s{s}" not in skip]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if jobs > 1 else dict(os.environ)
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    running = {f"pid {pid}": (lambda pid=pid: None if pid_alive(pid) else 0) for pid in running_pids}
    while queue or running:
        while queue and len(running) < jobs:
            name, seed = queue.pop(0)
            out = OUT / f"{name}-s{seed}"
            if (out / "summary.json").exists():
                continue
            seed_from_default(name, seed, out)
            log = open(OUT / "logs" / f"{name}-s{seed}.log", "w")  # noqa: SIM115 (closed with the process)
            proc = subprocess.Popen(command(name, seed, out), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            print(f"{time.strftime('%H:%M:%S')} start {name}-s{seed} (pid {proc.pid})", flush=True)
            running[f"{name}-s{seed}"] = proc.poll
        time.sleep(5)
        for label, poll in list(running.items()):
            if (code := poll()) is not None:
                print(f"{time.strftime('%H:%M:%S')} end {label}: exit {code}", flush=True)
                del running[label]


def result(name: str, seed: int) -> dict | None:
    """{set: accuracy after round 1, 'tokens': generated tokens over both rounds, 'seconds': the rounds' wall time,
    'selected': [per round]} or None when the run has not finished."""
    out = OUT / f"{name}-s{seed}"
    if not (out / "summary.json").exists():
        return None
    if name == PLAIN:
        s = json.loads((out / "summary.json").read_text())
        last = s["rounds"][-1]
        return {"heldout": last["test"], **{k: last[k] for k in SETS[1:]}, "tokens": s["completion_tokens"],
                "seconds": s["seconds"], "selected": [r["selected"] for r in s["rounds"]]}  # fmt: skip
    rounds = [json.loads(p.read_text()) for p in sorted(out.glob("round_*/metrics.json"))]
    last = rounds[-1]
    taken = 0.0  # round 0's sampling, taken from the default run (its own metrics time only what it did)
    if name in SAME_SAMPLES:
        taken = json.loads((OUT / f"default-s{seed}" / "round_0" / "metrics.json").read_text())["timing/generate"]
    return {
        "heldout": last["eval/accuracy"],
        **{k: last[f"eval/{k}/accuracy"] for k in SETS[1:]},
        "tokens": sum(m["gen/policy/tokens"] for m in rounds),
        "seconds": taken + sum(m["timing/round"] for m in rounds),
        "selected": [m["rs/num_selected"] for m in rounds],
    }


def table() -> str:
    sets = " | ".join(f"{s} (42 / 43)" for s in SETS)
    head = f"| variant | {sets} | mean of the 4 sets | tokens | time (s) | selected r0, r1 |"
    lines = [head, "|---" * 9 + "|"]
    for name in [*VARIANTS, PLAIN]:
        res = [result(name, s) for s in SEEDS]
        if not all(res):
            continue
        cells = [" / ".join(f"{r[k]:.1%}" for r in res) for k in SETS]
        mean = statistics.mean(r[k] for r in res for k in SETS)
        tokens = statistics.mean(r["tokens"] for r in res)
        secs = statistics.mean(r["seconds"] for r in res)
        sel = " / ".join(",".join(map(str, r["selected"])) for r in res)
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {mean:.1%} | {tokens:,.0f} | {secs:.0f} | {sel} |")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("run", "table"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", default=None, help="comma-separated variant names (plain-loop included)")
    p.add_argument("--running_pids", default="", help="comma-separated pids of runs still going (they hold slots)")
    p.add_argument("--skip", default="", help="comma-separated <variant>-s<seed> runs not to start (still going)")
    a = p.parse_args()
    if a.what == "run":
        names = a.only.split(",") if a.only else [*VARIANTS, PLAIN]
        run(names, a.jobs, [int(x) for x in a.running_pids.split(",") if x], [x for x in a.skip.split(",") if x])
    else:
        print(table())
