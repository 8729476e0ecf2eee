"""Llama 2's reward-model refresh (`reward_model_refresh`): before every round after the first, a new reward model,
trained on the run's own samples so far, replaces the recipe's `reward_model:` scorer.

Llama 2 (Touvron et al. 2023, §3.2.2) retrained its reward models as each batch of new preference data came in, so
that they stayed accurate on the distribution of the latest policy. Here the verifier (`eval_reward_funcs`) stands
in for the human labellers: before round r, the samples of rounds 0..r-1 are paired by their verified reward
(`rank_by: verified_reward`), at most `reward_model_refresh_pairs` pairs from each round (the labels a round may
buy), together with the pairs the first reward model trained on (`pairs_from`, when its folder holds them), and
`rs-trainer reward-model`'s own code trains on them with the recipe `reward_model_refresh` names.

The new model goes to `round_<r-1>/reward_model/` (`model/`, its pairs and `reward_model_metrics.json`, written
last). A resumed run that finds that file loads the model instead of training it again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rs_trainer.rewards import REWARD_MODEL_PREFIX
from rs_trainer.rewards.reward_model import TRAINING_METRICS, RewardModelScorer
from rs_trainer.run.ranks import log


def refreshed_reward_model(inputs, r: int) -> Path | None:
    """The folder of the reward model that scores round `r` under `reward_model_refresh`, trained now unless a
    finished one is on disk; None for round 0, or without a refresh (the recipe's own reward model scores).

    It trains in a child process, `rs-trainer reward-model` itself: `trl.RewardTrainer`'s arguments reset
    Accelerate's process-wide state, which this run's accelerator shares, and the child's memory is returned whole
    when it ends. Its output goes to `round_<r-1>/reward_model.log`."""
    from rs_trainer.tools.reward_training import build_pairs

    args, files = inputs.args, inputs.files
    if args.reward_model_refresh is None or r == 0:
        return None
    out = files.reward_model(r - 1)
    if (out / TRAINING_METRICS).is_file():
        return out / "model"
    first = Path(recipe_reward_model(args)).parent
    overrides = {
        "generations_from": [str(files.root)],
        "rounds": list(range(r)),
        "rank_by": "verified_reward",
        "pairs_per_round": args.reward_model_refresh_pairs,
    }
    data_args = refresh_data_args(args.reward_model_refresh, **overrides)
    if not build_pairs(data_args, args.seed):  # no prompt yet had a right and a wrong sample
        log(inputs.accelerator, f"round {r}: no pair to refresh the reward model with; the last one scores on")
        return refreshed_reward_model(inputs, r - 1)
    argv = ["--config", args.reward_model_refresh, "--output_dir", str(out), "--seed", str(args.seed)]
    argv += ["--generations_from", str(files.root), "--rounds", *map(str, range(r)), "--rank_by", "verified_reward"]
    if args.reward_model_refresh_pairs is not None:
        argv += ["--pairs_per_round", str(args.reward_model_refresh_pairs)]
    if (first / "pairs_train.jsonl").is_file():
        argv += ["--pairs_from", str(first)]
    log(inputs.accelerator, f"round {r}: training a reward model on rounds 0..{r - 1} ({out.name}.log)")
    # The child is one process of its own: none of this run's rendezvous variables.
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}
    with open(out.parent / "reward_model.log", "w") as output:
        done = subprocess.run(
            [sys.executable, "-m", "rs_trainer", "reward-model", *argv],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if done.returncode != 0:
        lines = (out.parent / "reward_model.log").read_text().splitlines()
        reason = next((line for line in reversed(lines) if "error:" in line), lines[-1] if lines else "no output")
        raise RuntimeError(
            f"round {r}: the reward-model refresh failed ({reason.strip()}); see {out.parent}/reward_model.log"
        )
    return out / "model"


DISTRIBUTED_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def refresh_data_args(recipe: str, **overrides):
    """The `RewardDataArguments` of a reward-model recipe, with `overrides`, read without building its
    `trl.RewardConfig` (which would reset this process's Accelerate state)."""
    import dataclasses

    import yaml

    from rs_trainer.tools.reward_training import RewardDataArguments

    raw = yaml.safe_load(Path(recipe).read_text()) or {}
    names = {f.name for f in dataclasses.fields(RewardDataArguments)}
    return RewardDataArguments(**{**{k: v for k, v in raw.items() if k in names}, **overrides})


def recipe_reward_model(args) -> str:
    """The path of the one `reward_model:` scorer of `reward_funcs` (`RSConfig` checks there is exactly one)."""
    named = (f for f in args.reward_funcs if isinstance(f, str) and f.startswith(REWARD_MODEL_PREFIX))
    return next(named)[len(REWARD_MODEL_PREFIX) :]


def use_reward_model(scoring, name: str, folder: Path) -> None:
    """Score with the reward model in `folder` from now on, in place of the scorer the recipe named `name`, on the
    same device. Rows keep the recipe's name for it in `rewards`; its `__name__` says which model it is."""
    old = scoring.scorers[name]
    if getattr(old, "__name__", "") != f"{REWARD_MODEL_PREFIX}{folder}":
        scoring.scorers[name] = RewardModelScorer(str(folder), device=str(old.device))
