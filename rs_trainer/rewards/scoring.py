"""A run's scorers in one object: `reward_funcs` rank the samples; `eval_reward_funcs` (where given) judge success,
held-out accuracy and pass@k, so that a reward model can train while the verifier measures."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from rs_trainer.errors import ConfigError
from rs_trainer.rewards import resolve_scorers, score
from rs_trainer.rewards.judge import JudgeScorer
from rs_trainer.rewards.verifiers import VERIFIER_POOL
from rs_trainer.run.ranks import on_main
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

    def served_judges(self) -> list:
        """The `kind: judge` scorers whose server the run starts (`command`), each once."""
        found = {id(fn): fn for fn in [*self.scorers.values(), *self.eval_scorers.values()]}
        return [fn for fn in found.values() if isinstance(fn, JudgeScorer) and fn.spec.command]

    def serve_judges(self, accelerator, log_for: Callable) -> None:
        """Start each `command` judge's server on the main process (its log at `log_for(name)`), check it, and point
        every rank at it; a server that does not start or answer stops the run on every rank, in one error."""
        judges = self.served_judges()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        if judges and accelerator.num_processes > local:
            raise ConfigError(
                f"`reward_funcs`: judge {judges[0].spec.name!r}: `command` serves it on the main node's loopback, "
                "which the other nodes cannot reach; serve the judge where every node reaches it and give `base_url`."
            )
        try:
            for judge in judges:
                name = judge.spec.name
                judge.use(on_main(accelerator, lambda j=judge, n=name: j.serve(log_for(n)), ConfigError))
        except BaseException:
            self.stop_judges()
            raise

    def stop_judges(self) -> None:
        for judge in self.served_judges():
            judge.stop()

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
