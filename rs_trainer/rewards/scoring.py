"""A run's scorers in one object: `reward_funcs` rank the samples; `eval_reward_funcs` (where given) judge success,
held-out accuracy and pass@k, so that a reward model can train while the verifier measures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rs_trainer.rewards import resolve_scorers, score
from rs_trainer.rewards.verifiers import VERIFIER_POOL
from rs_trainer.samples import with_scores


@dataclass(frozen=True)
class Scoring:
    scorers: dict[str, Callable]
    weights: dict[str, float]
    eval_scorers: dict[str, Callable]
    eval_weights: dict[str, float]

    @classmethod
    def from_recipe(cls, args, device, prompts: list[dict]) -> Scoring:
        """The recipe's scorers, loaded on `device` (reward models) and checked against `prompts`' columns; the
        verifiers' worker pool sized and limited by `verifier_workers` and `verifier_timeout`."""
        VERIFIER_POOL.update(workers=args.verifier_workers, timeout=args.verifier_timeout)
        scorers, weights = resolve_scorers(
            "reward_funcs", args.reward_funcs, args.reward_weights, device, prompts, args.dataset_name
        )
        if not args.eval_reward_funcs:
            return cls(scorers, weights, scorers, weights)
        eval_scorers, eval_weights = resolve_scorers(
            "eval_reward_funcs", args.eval_reward_funcs, None, device, prompts, args.dataset_name
        )
        return cls(scorers, weights, eval_scorers, eval_weights)

    def score(self, rows: list[dict]) -> list[dict]:
        """`rows` with `reward` and `rewards` from `reward_funcs`; with `eval_reward_funcs` also `verified_reward`,
        which pass@k counts."""
        scored = with_scores(rows, score(rows, self.scorers, self.weights))
        if self.eval_scorers is not self.scorers:
            verified = score(rows, self.eval_scorers, self.eval_weights)
            scored = [{**s, "verified_reward": v["reward"]} for s, v in zip(scored, verified, strict=True)]
        return scored

    def judge(self, rows: list[dict]) -> list[float | None]:
        """Each row's reward from the eval scorers: what held-out accuracy is computed from."""
        return [sc["reward"] for sc in score(rows, self.eval_scorers, self.eval_weights)]
