"""Datasets for other trainers from the scored samples of a run: DPO preference pairs and SFT sets, in TRL's
conversational formats, so that `trl.DPOTrainer` and `trl.SFTTrainer` train on them as they are.

Pure functions over sample lists (`dpo_pairs`, and `sft_rows` from `rs_trainer.run.formats`), and `export_*`
helpers that read
`output_dir/round_<r>/generations.jsonl` (one round, several, or all of them pooled) and write one JSONL file
atomically. Each row keeps `round`, `prompt_id` and the sample indices it came from: rows are keyed, never by text.

    rs-trainer export dpo --output_dir outputs/run --out pairs.jsonl --rule best_vs_each_lower
    rs-trainer export sft --output_dir outputs/run --rounds 0 1 --out sft.jsonl
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from rs_trainer.phases.filters import MARGIN_TOLERANCE
from rs_trainer.phases.selection import rank_key, scored
from rs_trainer.run import seeds
from rs_trainer.run.formats import pair_row, sft_rows
from rs_trainer.run.io import read_jsonl, write_jsonl
from rs_trainer.run.layout import RunLayout

PAIR_RULES = ("best_vs_worst", "best_vs_random", "best_vs_each_lower")


def ranking_score(sample: dict, length_penalty: float = 0.0) -> float:
    """The score pairs are ranked by: `reward - length_penalty * completion_tokens`.

    >>> ranking_score({"reward": 1.0, "completion_tokens": 20}, length_penalty=0.01)
    0.8
    """
    return sample["reward"] - length_penalty * sample.get("completion_tokens", 0)


def _scored_groups(samples: list[dict]) -> dict[tuple, list[dict]]:
    """Samples with a reward, grouped by (round, prompt_id); NaN is refused with the sample named."""
    groups = defaultdict(list)
    for s in scored(samples):
        groups[(s.get("round"), s["prompt_id"])].append(s)
    return groups


def dpo_pairs(
    samples: list[dict],
    rule: str = "best_vs_worst",
    min_margin: float = 0.0,
    length_penalty: float = 0.0,
    seed: int = 0,
    prefer_shorter: bool = True,
) -> list[dict]:
    """Preference pairs in TRL's conversational format: `prompt` (messages), `chosen` and `rejected` (one
    assistant message each), with `round`, `prompt_id`, the two sample indices, their rewards and the `margin`.

    Samples are paired within one (round, prompt_id) and ranked by `ranking_score` (reward minus the length
    penalty), ties broken as in selection (`rank_key`: shorter first when `prefer_shorter`, then a seeded draw).
    The chosen sample is always the best one; a rejected sample must score strictly lower and at least
    `min_margin` lower (within `MARGIN_TOLERANCE`), so a pair is always a real preference. Samples with reward None
    are never paired.

    Args:
        samples (`list[dict]`): scored samples with `prompt` (messages), `completion` (text), `reward`,
            `completion_tokens`, `prompt_id`, `sample_index` and optionally `round` and `model`.
        rule (`str`, *optional*, defaults to `"best_vs_worst"`): `best_vs_worst` (one pair per prompt, against the
            lowest), `best_vs_random` (one pair, against a seeded draw among the lower ones) or `best_vs_each_lower`
            (one pair per lower sample).
        min_margin (`float`, *optional*, defaults to `0.0`): smallest ranking-score gap of a pair.
        length_penalty (`float`, *optional*, defaults to `0.0`): coefficient on `completion_tokens`.
        seed (`int`, *optional*, defaults to `0`): seed of the tie-breaks and of `best_vs_random`'s draws.

    Example (best_vs_each_lower, min_margin 0.3): prompt "a" with rewards [0.2, 1.0, 0.9, 0.5] -> pairs
    (chosen 1, rejected 3) and (chosen 1, rejected 0): sample 2 is within 0.3 of the best. With length_penalty 0.01
    and lengths [10, 60, 10, 10] the scores are [0.1, 0.4, 0.8, 0.4]: sample 2 is chosen, and `best_vs_worst`
    pairs it with sample 0.
    """
    if rule not in PAIR_RULES:
        raise ValueError(f"Pairing rule {rule!r} is unknown; choose one of {PAIR_RULES}.")
    if min_margin < 0:
        raise ValueError(f"`min_margin` must be >= 0, got {min_margin}.")
    pairs = []
    for (round_index, prompt_id), group in _scored_groups(samples).items():
        scored = [{**s, "score": ranking_score(s, length_penalty)} for s in group]
        ranked = sorted(scored, key=lambda s: rank_key({**s, "reward": s["score"]}, seed, prefer_shorter))
        best = ranked[0]
        gaps = [(s, best["score"] - s["score"]) for s in ranked[1:]]
        lower = [(s, gap) for s, gap in gaps if gap > 0 and gap >= min_margin - MARGIN_TOLERANCE]
        if not lower:
            continue
        if rule == "best_vs_worst":
            lower = lower[-1:]
        elif rule == "best_vs_random":
            lower = [seeds.dpo_draw_rng(seed, round_index, prompt_id).choice(lower)]
        pairs.extend(pair_row(best, s, gap) for s, gap in lower)
    return pairs


def round_numbers(output_dir: str | Path) -> list[int]:
    """The rounds of a run that have scored rows (`round_<r>/generations.jsonl`), in order.

    Example: a folder with round_0/, round_2/ and round_10/, each holding generations.jsonl -> [0, 2, 10].
    """
    files = RunLayout(output_dir)
    return [r for r in files.rounds() if files.generations(r).exists()]


def load_generations(output_dir: str | Path, rounds: int | list[int] | None = None) -> list[dict]:
    """The scored rows of one round, a list of rounds, or (None) every round on disk, pooled in round order."""
    if not Path(output_dir).is_dir():
        raise FileNotFoundError(f"{output_dir} is not a folder; name the output_dir of a finished run.")
    available = round_numbers(output_dir)
    wanted = available if rounds is None else [rounds] if isinstance(rounds, int) else list(rounds)
    missing = [r for r in wanted if r not in available]
    if missing or not wanted:
        raise FileNotFoundError(
            f"{output_dir} has scored rows for rounds {available}; round(s) {missing or wanted} have no "
            "generations.jsonl. Pick rounds from that list, or let the run finish generating and scoring."
        )
    rows = []
    for r in wanted:
        rows.extend({"round": r, **row} for row in read_jsonl(RunLayout(output_dir).generations(r)))
    return rows


def export_sft(
    output_dir: str | Path,
    path: str | Path,
    rounds: int | list[int] | None = None,
    selected_only: bool = True,
    drop_truncated: bool = False,
) -> list[dict]:
    """Write `sft_rows` of the chosen rounds (default all, pooled) to `path`; return the rows."""
    rows = sft_rows(load_generations(output_dir, rounds), selected_only, drop_truncated)
    write_jsonl(path, rows)
    return rows


def export_dpo(
    output_dir: str | Path, path: str | Path, rounds: int | list[int] | None = None, **pair_options
) -> list[dict]:
    """Write `dpo_pairs` of the chosen rounds (default all; pairs never cross rounds) to `path`; return the rows.
    `pair_options` are `dpo_pairs`' keyword arguments."""
    rows = dpo_pairs(load_generations(output_dir, rounds), **pair_options)
    write_jsonl(path, rows)
    return rows
