"""`temperature: auto`: each such round picks its sampling temperature with a small probe (Llama 2 saw the best
temperature drift from round to round as the model sharpens).

The probe takes `temperature_probe_prompts` of the round's own prompts (a seeded draw), samples each of them N
times at every temperature of `temperature_grid`, scores the samples with the round's reward functions, and keeps
the temperature with the highest expected best-of-N reward, estimated without bias from the N samples
(`estimators.expected_best_of_n`); ties go to the higher mean reward, then to the lower temperature. The probe
prompts' samples at the chosen temperature are the round's samples for those prompts, so the probe costs
(len(grid) - 1) x probe prompts x N extra samples: with the default grid of 4 and 8 probe prompts, 24 prompts'
worth, which is 25% of a 96-prompt round and 2.3% of a 1024-prompt one.

Pure: rewards in, a choice out; the trainer does the sampling.
"""

from __future__ import annotations

import math

from rs_trainer.phases.estimators import expected_best_of_n
from rs_trainer.run import seeds

AUTO = "auto"  # `temperature: auto`, the recipe value that asks for a probe each round


def probe_prompts(prompts: list[dict], count: int, seed: int, round_index: int) -> list[dict]:
    """A seeded draw of `count` of the round's prompts (all of them when there are fewer), in the round's order."""
    if count >= len(prompts):
        return list(prompts)
    picked = set(seeds.probe_draw_rng(seed, round_index).sample(range(len(prompts)), count))
    return [p for i, p in enumerate(prompts) if i in picked]


def choose_temperature(rewards: dict[float, dict[str, list[float]]], n: int) -> tuple[float, list[dict]]:
    """The best temperature and the probe's table.

    `rewards` maps each temperature to {prompt_id: that prompt's rewards}; every temperature covers the same
    prompts. A sample without a reward (a scorer that abstained) counts as the lowest reward seen. The table has one
    row per temperature, in ascending order: `temperature`, `best_of_n` (the mean over prompts of the expected best
    of `n` rewards) and `mean_reward`.

    Best-of-2 is 0.5 at 0.6 and 1.0 at 1.0, although both have mean reward 0.5:

    >>> choose_temperature({0.6: {"a": [0, 0], "b": [1, 1]}, 1.0: {"a": [0, 1], "b": [1, 0]}}, n=2)[0]
    1.0
    """
    floor = min(
        (x for by_prompt in rewards.values() for rs in by_prompt.values() for x in rs if x is not None), default=0.0
    )
    table = []
    for t in sorted(rewards):
        by_prompt = rewards[t]
        filled = [[floor if x is None else x for x in rs] for rs in by_prompt.values()]
        table.append(
            {
                "temperature": t,
                "best_of_n": math.fsum(expected_best_of_n(rs, min(n, len(rs))) for rs in filled) / len(filled),
                "mean_reward": math.fsum(x for rs in filled for x in rs) / sum(len(rs) for rs in filled),
            }
        )
    best = max(table, key=lambda row: (row["best_of_n"], row["mean_reward"], -row["temperature"]))
    return best["temperature"], table


def probe_metrics(table: list[dict], chosen: float, extra_tokens: int) -> dict:
    """The probe's table as flat metrics: `probe/T=<t>/best_of_n` and `/mean_reward` per temperature, the chosen one
    and the tokens generated at the temperatures not chosen (the probe's cost)."""
    metrics = {"probe/temperature": chosen, "probe/extra_tokens": extra_tokens}
    for row in table:
        metrics[f"probe/T={row['temperature']:g}/best_of_n"] = row["best_of_n"]
        metrics[f"probe/T={row['temperature']:g}/mean_reward"] = row["mean_reward"]
    return metrics
