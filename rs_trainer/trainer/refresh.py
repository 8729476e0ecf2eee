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

from pathlib import Path

from rs_trainer.rewards import REWARD_MODEL_PREFIX
from rs_trainer.rewards.reward_model import TRAINING_METRICS, RewardModelScorer
from rs_trainer.trainer.ranks import log


def refreshed_reward_model(inputs, r: int) -> Path | None:
    """The folder of the reward model that scores round `r` under `reward_model_refresh`, trained now unless a
    finished one is on disk; None for round 0, or without a refresh (the recipe's own reward model scores)."""
    args, files = inputs.args, inputs.files
    if args.reward_model_refresh is None or r == 0:
        return None
    out = files.reward_model(r - 1)
    if not (out / TRAINING_METRICS).is_file():
        from rs_trainer.tools.reward_training import NoPairsError, parse_args, train_reward_model

        first = Path(recipe_reward_model(args)).parent
        argv = ["--config", args.reward_model_refresh, "--output_dir", str(out), "--seed", str(args.seed)]
        argv += ["--generations_from", str(files.root), "--rounds", *map(str, range(r))]
        argv += ["--rank_by", "verified_reward"]
        if args.reward_model_refresh_pairs is not None:
            argv += ["--pairs_per_round", str(args.reward_model_refresh_pairs)]
        if (first / "pairs_train.jsonl").is_file():
            argv += ["--pairs_from", str(first)]
        try:
            train_reward_model(*parse_args(argv))
        except NoPairsError:  # no prompt yet had a right and a wrong sample: the last reward model scores on
            log(inputs.accelerator, f"round {r}: no pair to refresh the reward model with; the last one scores on")
            return refreshed_reward_model(inputs, r - 1)
    return out / "model"


def recipe_reward_model(args) -> str:
    """The path of the one `reward_model:` scorer of `reward_funcs` (`RSConfig` checks there is exactly one)."""
    return next(f for f in args.reward_funcs if f.startswith(REWARD_MODEL_PREFIX))[len(REWARD_MODEL_PREFIX) :]


def use_reward_model(scoring, name: str, folder: Path) -> None:
    """Score with the reward model in `folder` from now on, in place of the scorer the recipe named `name`, on the
    same device. Rows keep the recipe's name for it in `rewards`; its `__name__` says which model it is."""
    old = scoring.scorers[name]
    if getattr(old, "__name__", "") != f"{REWARD_MODEL_PREFIX}{folder}":
        scoring.scorers[name] = RewardModelScorer(str(folder), device=str(old.device))
