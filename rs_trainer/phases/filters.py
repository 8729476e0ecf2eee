"""Filters applied before selection: pure functions from a sample list to the samples that may still be selected.

A sample is a dict with `prompt_id`, `sample_index`, `reward` (float, or None for "no opinion"), `completion`,
`completion_tokens` and `finished`, as `rs_trainer.phases.generation.generate` and the scorers produce it. Every filter
keeps the input order and never changes a sample; a filter that reads rewards refuses NaN, naming the sample.
Rewards of None count as "no opinion": they never make a prompt informative.

`apply_filters` chains them in a fixed order: unfinished, duplicates, constant prompts, margin, so that a duplicate
of a truncated completion cannot shadow a finished one, and margins are measured on what is left.
"""

from __future__ import annotations

import statistics

from rs_trainer.phases.selection import scored
from rs_trainer.samples import group_by_prompt, normalise_completion

DEDUPE_MODES = ("exact", "normalised")
# Margins are differences of floats: 0.6 - 0.5 is 0.0999...98. A gap this close to the bar counts as reaching it.
MARGIN_TOLERANCE = 1e-9


def _rewards(group: list[dict]) -> list[float]:
    """The non-None rewards of a group; NaN is refused with the sample named."""
    return [s["reward"] for s in scored(group)]


def _keep_prompts(samples: list[dict], keep) -> list[dict]:
    kept = {pid for pid, group in group_by_prompt(samples).items() if keep(group)}
    return [s for s in samples if s["prompt_id"] in kept]


def drop_duplicates(samples: list[dict], mode: str = "normalised", order=None) -> list[dict]:
    """Keep one sample of each distinct completion of a prompt: the one with the smallest `sample_index` (or the
    smallest `order(sample)`, where sample indices repeat, as in samples pooled over rounds).

    `mode`: `exact` compares the text as is; `normalised` compares `normalise_completion(text)` (whitespace and
    case ignored). Identical texts of different prompts are kept: duplicates are only looked for within a prompt.

    Example (normalised): prompt "a" with completions ["4", " 4", "Four", "four"] at sample_index [0, 1, 2, 3]
    -> samples ("a", 0) and ("a", 2).
    """
    if mode not in DEDUPE_MODES:
        raise ValueError(f"Duplicate mode {mode!r} is unknown; choose one of {DEDUPE_MODES}.")
    key = normalise_completion if mode == "normalised" else (lambda text: text)
    order = order or (lambda s: s["sample_index"])
    first: dict[tuple[str, str], int] = {}
    for i, s in enumerate(samples):
        k = (s["prompt_id"], key(s["completion"]))
        if k not in first or order(s) < order(samples[first[k]]):
            first[k] = i
    return [s for i, s in enumerate(samples) if first[(s["prompt_id"], key(s["completion"]))] == i]


def drop_unfinished(samples: list[dict]) -> list[dict]:
    """Drop truncated completions (`finished` false: no end token before `max_completion_length`) and empty ones (only
    whitespace). A truncated sample teaches the model to stop mid-answer; an empty one teaches it to say nothing.

    Example: completions [("4", finished), ("4 +", truncated), ("  ", finished)] -> only the first.
    """
    return [s for s in samples if s["finished"] and s["completion"].strip()]


def drop_constant_prompts(samples: list[dict]) -> list[dict]:
    """Drop every sample of a prompt whose scored samples all have the same reward (or that has fewer than two
    scored samples): such a prompt says nothing about which completion is better. With N=1 every prompt goes.

    Example: {"a": [1, 1, 1], "b": [0, 1, 0], "c": [0.5, None]} -> only prompt "b"'s samples stay.
    """
    return _keep_prompts(samples, lambda group: len(set(_rewards(group))) > 1)


def reward_margin(rewards: list[float]) -> float:
    """Best reward minus the median reward (the mean of the two middle values when the count is even).

    >>> round(reward_margin([0.0, 0.2, 0.4, 1.0]), 6), reward_margin([0.5])  # 1.0 - 0.3
    (0.7, 0.0)
    """
    return max(rewards) - statistics.median(rewards)


def drop_small_margin(samples: list[dict], min_margin: float) -> list[dict]:
    """Drop every sample of a prompt whose best reward beats its median reward by less than `min_margin`
    (`reward_margin`, within `MARGIN_TOLERANCE`). Prompts with no scored sample go too.

    Example (min_margin 0.5): {"a": [0.0, 0.2, 0.4, 1.0], "b": [0.6, 0.7, 0.9]} -> "a" stays (margin 0.7), "b"
    goes (margin 0.2).
    """
    if min_margin < 0:
        raise ValueError(f"`min_margin` must be >= 0, got {min_margin}.")

    def keep(group: list[dict]) -> bool:
        rewards = _rewards(group)
        return bool(rewards) and reward_margin(rewards) >= min_margin - MARGIN_TOLERANCE

    return _keep_prompts(samples, keep)


def apply_filters(
    samples: list[dict],
    drop_truncated: bool = False,
    dedupe: str | None = None,
    drop_constant: bool = False,
    min_margin: float | None = None,
    removed: dict | None = None,
) -> list[dict]:
    """Apply the filters that are switched on, in the order unfinished, duplicates, constant, margin.

    Args:
        samples (`list[dict]`): scored samples.
        drop_truncated (`bool`, *optional*, defaults to `False`): `drop_unfinished`.
        dedupe (`str` or `None`, *optional*): `exact` or `normalised` for `drop_duplicates`; None keeps them.
        drop_constant (`bool`, *optional*, defaults to `False`): `drop_constant_prompts`.
        min_margin (`float` or `None`, *optional*): `drop_small_margin` with this margin; None is off.
        removed (`dict` or `None`, *optional*): filled with (prompt_id, sample_index) -> the recipe key of the
            filter that removed the sample (`drop_truncated`, `dedupe`, `drop_constant_prompts`,
            `min_reward_margin`), for the run browser.

    Example: prompt "a" with completions ["7", "7 ", "8"], rewards [1, 1, 0], all finished; with
    `dedupe="normalised", drop_constant=True` -> ("a", 0) and ("a", 2): sample 1 duplicates sample 0, and the prompt
    keeps two distinct rewards.
    """
    steps = (
        ("drop_truncated", drop_unfinished if drop_truncated else None),
        ("dedupe", (lambda rows: drop_duplicates(rows, dedupe)) if dedupe is not None else None),
        ("drop_constant_prompts", drop_constant_prompts if drop_constant else None),
        ("min_reward_margin", (lambda rows: drop_small_margin(rows, min_margin)) if min_margin is not None else None),
    )
    for name, step in steps:
        if step is None:
            continue
        kept = step(samples)
        if removed is not None:
            ids = {id(s) for s in kept}
            removed.update({(s["prompt_id"], s["sample_index"]): name for s in samples if id(s) not in ids})
        samples = kept
    return samples


def apply_recipe_filters(samples: list[dict], args, removed: dict | None = None) -> list[dict]:
    """`apply_filters` with a recipe's keys (`args` is an `RSConfig`): `drop_truncated`, `dedupe`,
    `drop_constant_prompts` and `min_reward_margin`; `removed` as there.

    Example: `dedupe: normalised`, the other keys off; one prompt's completions ["7", "7 "] -> the first only.
    """
    return apply_filters(
        samples,
        drop_truncated=args.drop_truncated,
        dedupe=args.dedupe,
        drop_constant=args.drop_constant_prompts,
        min_margin=args.min_reward_margin,
        removed=removed,
    )
