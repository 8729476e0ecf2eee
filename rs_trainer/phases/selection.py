"""Selection: pure, deterministic functions from scored samples to the samples kept for SFT.

A sample here is a dict with at least `prompt_id`, `sample_index`, `reward` (float, or None for "no opinion") and
`completion_tokens`. Every strategy returns the chosen `(prompt_id, sample_index)` keys, best first; the filters
that may run before it (duplicates, truncated samples, uninformative prompts) are in `rs_trainer.phases.filters`.

Order among samples (`rank_key`): higher reward first; among equal rewards the shorter completion when
`prefer_shorter`; then a draw seeded by (seed, prompt_id, sample_index), so ties are broken the same way every run
and no sample position is favoured. Samples with reward None, or below `min_reward`, are never selected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from rs_trainer.run import seeds
from rs_trainer.samples import Key, group_by_prompt, key

FIELDS = ("prompt_id", "sample_index", "reward", "completion_tokens")  # all that a strategy reads of a sample


def rank_key(sample: dict, seed: int, prefer_shorter: bool = True) -> tuple:
    """Sort key: smaller is better."""
    length = sample.get("completion_tokens", 0) if prefer_shorter else 0
    return (-sample["reward"], length, seeds.tie_draw(seed, sample["prompt_id"], sample["sample_index"]))


def scored(samples: list[dict]) -> list[dict]:
    """The samples that have a reward (not None); a NaN reward is refused with the sample named."""
    out = []
    for s in samples:
        r = s["reward"]
        if r is None:
            continue
        if isinstance(r, float) and math.isnan(r):
            raise ValueError(f"NaN reward for prompt_id {s['prompt_id']!r}, sample {s['sample_index']}.")
        out.append(s)
    return out


def _eligible(samples: list[dict], min_reward: float | None) -> list[dict]:
    return [s for s in scored(samples) if min_reward is None or s["reward"] >= min_reward]


def top_k_per_prompt(
    samples: list[dict], k: int, seed: int = 0, prefer_shorter: bool = True, min_reward: float | None = None
) -> list[Key]:
    """The `k` best samples of every prompt.

    Example (k=1, prefer_shorter): prompt "a" has rewards [1, 0, 1] with lengths [9, 3, 4] -> ("a", 2): both 1.0
    samples tie on reward and sample 2 is shorter.
    """
    chosen = []
    for group in group_by_prompt(_eligible(samples, min_reward)).values():
        group.sort(key=lambda s: rank_key(s, seed, prefer_shorter))
        chosen.extend(key(s) for s in group[:k])
    return chosen


def best_of_n(samples: list[dict], seed: int = 0, prefer_shorter: bool = True, min_reward: float | None = None):
    """Per-prompt argmax: `top_k_per_prompt` with k=1.

    Example: rewards {"a": [0.2, 0.9], "b": [0.5, 0.1]} -> [("a", 1), ("b", 0)].
    """
    return top_k_per_prompt(samples, 1, seed, prefer_shorter, min_reward)


def threshold(
    samples: list[dict],
    reward_threshold: float,
    cap_per_prompt: int | None = None,
    seed: int = 0,
    prefer_shorter: bool = True,
) -> list[Key]:
    """Every sample with reward >= `reward_threshold`, at most `cap_per_prompt` per prompt (the best ones).

    Example (threshold 0.5, cap 1): {"a": [0.6, 0.7], "b": [0.4]} -> [("a", 1)].
    """
    kept = _eligible(samples, reward_threshold)
    if cap_per_prompt is None:
        return [key(s) for s in sorted(kept, key=lambda s: rank_key(s, seed, prefer_shorter))]
    return top_k_per_prompt(kept, cap_per_prompt, seed, prefer_shorter)


def statistical_rejection(
    samples: list[dict], k: int, beta: float, seed: int = 0, min_reward: float | None = None
) -> list[Key]:
    """RSO's statistical rejection sampling (Liu et al., 2023) toward p*(y|x) ∝ π(y|x)·exp(r(x,y)/β), per prompt.

    The prompt's candidates were sampled from the policy π, so each is a draw from the proposal; until `k` are
    accepted or none is left: draw one remaining candidate uniformly, accept it with probability
    exp((r - r_max)/β), where r_max is the best reward still among the remaining, and take an accepted one out.
    With k=1 the accepted sample follows exp(r/β) over the candidates (uniform proposal); as β -> 0 only the best
    reward is ever accepted (best-of-N), and as β grows every candidate is as likely. Draws are seeded by
    (seed, prompt_id), so a run selects the same way every time.

    Example (β=0.5, k=1): rewards [1.0, 0.0] -> sample 0 is accepted with probability e^2/(e^2+1) ≈ 0.88.
    """
    if beta <= 0:
        raise ValueError(f"`rso_beta` must be > 0, got {beta}.")
    chosen = []
    for prompt_id, group in group_by_prompt(_eligible(samples, min_reward)).items():
        rng = seeds.rso_rng(seed, prompt_id)
        remaining = sorted(group, key=lambda s: s["sample_index"])
        accepted = 0
        while remaining and accepted < k:
            best = max(s["reward"] for s in remaining)
            pick = remaining[rng.randrange(len(remaining))]
            if rng.random() < math.exp((pick["reward"] - best) / beta):
                chosen.append(key(pick))
                remaining.remove(pick)
                accepted += 1
    return chosen


def top_k_global(
    samples: list[dict], k: int, seed: int = 0, prefer_shorter: bool = True, min_reward: float | None = None
) -> list[Key]:
    """The `k` best samples over the whole flattened reward matrix.

    Example (k=2): {"a": [0.1, 0.8], "b": [0.9, 0.3]} -> [("b", 0), ("a", 1)].
    """
    ranked = sorted(_eligible(samples, min_reward), key=lambda s: rank_key(s, seed, prefer_shorter))
    return [key(s) for s in ranked[:k]]


def percentile_value(rewards: list[float], q: float) -> float:
    """The `q`-th percentile (0..100) of `rewards`, interpolated linearly between order statistics (numpy's default
    `linear` method): position `q / 100 * (n - 1)` in the sorted list.

    >>> percentile_value([0.0, 1.0, 2.0, 3.0], 50), percentile_value([0.0, 1.0, 2.0, 3.0], 100)
    (1.5, 3.0)
    >>> percentile_value([4.0], 30)
    4.0
    """
    if not 0 <= q <= 100:
        raise ValueError(f"Percentile must be in [0, 100], got {q}.")
    if not rewards:
        raise ValueError("No rewards to take a percentile of.")
    ordered = sorted(rewards)
    position = q * (len(ordered) - 1) / 100
    lo = math.floor(position)
    if lo == len(ordered) - 1:
        return ordered[lo]
    # `lo + frac` and equal neighbours give exactly `ordered[lo]`, so ties at the cut are all kept.
    return ordered[lo] + (position - lo) * (ordered[lo + 1] - ordered[lo])


def percentile_per_prompt(
    samples: list[dict],
    q: float,
    cap_per_prompt: int | None = None,
    seed: int = 0,
    prefer_shorter: bool = True,
    min_reward: float | None = None,
) -> list[Key]:
    """Samples at or above their own prompt's `q`-th reward percentile (`percentile_value` over the prompt's scored
    samples), best first within each prompt, at most `cap_per_prompt` per prompt. A relative bar: every prompt
    keeps its best samples however hard it is, which an absolute `threshold` cannot do.

    Example (q=50): {"a": [0.0, 1.0, 2.0, 3.0], "b": [5.0, 5.0]} -> [("a", 3), ("a", 2), ("b", 0), ("b", 1)] (in
    "b" the order of the tied samples is the seeded draw): "a"'s median is 1.5, and every sample of "b" equals its
    median.
    """
    chosen = []
    for group in group_by_prompt(_eligible(samples, None)).values():
        cut = percentile_value([s["reward"] for s in group], q)
        if min_reward is not None:
            cut = max(cut, min_reward)
        kept = sorted((s for s in group if s["reward"] >= cut), key=lambda s: rank_key(s, seed, prefer_shorter))
        chosen.extend(key(s) for s in kept[:cap_per_prompt])
    return chosen


def schedule_value(schedule: list[float], round_index: int) -> float:
    """The value of a per-round schedule in round `round_index` (0-based); the last value repeats. The schedule
    must not fall: a later round never keeps a looser share than an earlier one.

    >>> schedule_value([50, 75, 90], 1), schedule_value([50, 75, 90], 5)
    (75, 90)
    """
    if not schedule:
        raise ValueError("The schedule is empty; give one value or one per round.")
    for r in range(1, len(schedule)):
        if schedule[r] < schedule[r - 1]:
            raise ValueError(
                f"The schedule {list(schedule)} falls at round {r} ({schedule[r - 1]} -> {schedule[r]}); "
                "give non-decreasing values."
            )
    return schedule[min(round_index, len(schedule) - 1)]


def matched_random(samples: list[dict], chosen: list[Key], seed: int) -> list[Key]:
    """The control of a selection rule: per prompt, as many samples as the rule `chosen`, drawn uniformly (seeded
    per prompt) from all of that prompt's `samples`, whatever their reward, so the rule's only edge over the
    control is which samples it picks, never how many, nor from which prompts.

    Example: the rule kept 1 of prompt "a" and 2 of "b" -> a draw of 1 of a's samples and 2 of b's, none of "c".
    """
    count: dict[str, int] = {}
    for pid, _ in chosen:
        count[pid] = count.get(pid, 0) + 1
    drawn = []
    for pid, group in group_by_prompt(samples).items():
        if pid in count:
            indices = sorted(s["sample_index"] for s in group)
            drawn.extend((pid, i) for i in seeds.matched_random_rng(seed, pid).sample(indices, count[pid]))
    return drawn


@dataclass(frozen=True)
class Rule:
    """A selection rule as a recipe names it. `pick(samples, args, seed, round_index)` returns the kept keys (`args`
    is the RSConfig; `seed` the round's); `reads` are the recipe keys that only some rules read, a recipe setting one
    under a rule that does not read it being refused; `needs` maps each key the rule cannot do without to what it
    means, for the error message when it is unset."""

    pick: Callable
    reads: tuple[str, ...] = ()
    needs: dict[str, str] = field(default_factory=dict)


def _kw(args, seed: int) -> dict:
    return {"seed": seed, "prefer_shorter": args.prefer_shorter}


def _threshold(samples, args, seed, r):
    floor = args.reward_threshold if args.min_reward is None else max(args.reward_threshold, args.min_reward)
    return threshold(samples, floor, args.max_per_prompt, **_kw(args, seed))


def _top_k(samples, args, seed, r):
    return top_k_global(samples, args.top_k_count(len(samples)), min_reward=args.min_reward, **_kw(args, seed))


# Every rule a recipe's `selection` may name: a new rule is its function and one entry here (RSConfig's choices and
# the check of which keys each rule reads come from this table).
RULES = {
    "best_of_n": Rule(lambda s, args, seed, r: best_of_n(s, min_reward=args.min_reward, **_kw(args, seed))),
    "top_k_per_prompt": Rule(
        lambda s, args, seed, r: top_k_per_prompt(s, args.k_per_prompt, min_reward=args.min_reward, **_kw(args, seed)),
        reads=("k_per_prompt",),
    ),
    "threshold": Rule(
        _threshold,
        reads=("reward_threshold", "max_per_prompt"),
        needs={"reward_threshold": "keep samples with reward >= this"},
    ),
    "percentile": Rule(
        lambda s, args, seed, r: percentile_per_prompt(
            s,
            schedule_value(args.reward_percentile, r),
            args.max_per_prompt,
            min_reward=args.min_reward,
            **_kw(args, seed),
        ),
        reads=("reward_percentile", "max_per_prompt"),
    ),
    "top_k": Rule(
        _top_k,
        reads=("selection_top_k",),
        needs={"selection_top_k": "the samples kept over all prompts; `top_k` is sampling's top-k, as in TRL"},
    ),
    "top_fraction": Rule(
        _top_k, reads=("top_fraction",), needs={"top_fraction": "the fraction of all samples kept, in (0, 1]"}
    ),
    "rso": Rule(  # β may rise or fall over the rounds
        lambda s, args, seed, r: statistical_rejection(
            s, args.k_per_prompt, args.for_round("rso_beta", r), seed=seed, min_reward=args.min_reward
        ),
        reads=("k_per_prompt", "rso_beta"),
    ),
}


def select(samples: list[dict], args, seed: int, round_index: int = 0) -> list[Key]:
    """Apply the rule a recipe names (`args` is an `RSConfig`; `RULES`); `round_index` picks a per-round value.
    With `matched_random`, the rule's picks are replaced by its matched-random control (`matched_random`)."""
    chosen = RULES[args.selection].pick(samples, args, seed, round_index)
    return matched_random(samples, chosen, seed) if args.matched_random else chosen
