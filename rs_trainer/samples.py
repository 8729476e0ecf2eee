"""The row that travels between the phases (a sample: one completion of one prompt), and the helpers every layer
uses on it. Rows stay plain dicts, as they are read from and written to JSONL; `SampleRow` names their keys.

A row is keyed by (prompt_id, sample_index) within a round, never by its text (`key`, `in_key_order`).

>>> rows = [{"prompt_id": "b", "sample_index": 0}, {"prompt_id": "a", "sample_index": 1}]
>>> [key(s) for s in in_key_order(rows)]
[('a', 1), ('b', 0)]
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, TypedDict

Key = tuple[str, int]  # (prompt_id, sample_index): a row's identity within a round


class SampleRow(TypedDict, total=False):
    """The keys of a row, in the order the phases add them. Only the generator's keys are always there; the others
    appear as a row goes through the round.

    From the dataset (`rs_trainer.run.data.load_prompts`):
    - `prompt_id` (`str`): the prompt's stable id.
    - `prompt` (`list[dict]`): chat messages; other dataset columns (`answer`, tests) ride along under their names.

    From a generator (`rs_trainer.generators`):
    - `sample_index` (`int`): unique per prompt within a round, over every generator
      (`generators.checks.sample_ranges`).
    - `completion` (`str`): the text, without the end token; `completion_tokens` (`int`) its length in tokens.
    - `finished` (`bool`): an end token came before `max_completion_length`.
    - `finish_reason`, `logprob`, `server_template`: where a server gives them (`generators.openai_client`).

    From the trainer: `generator` (`str`), `round` (`int`), `generated_at` (`float`, wall-clock seconds).

    From the scorers (`rs_trainer.rewards.score`): `reward` (`float`, or None for "no opinion"), `rewards` (`dict`,
    per scorer), and `verified_reward` when `eval_reward_funcs` judges success apart from the ranking reward;
    `step_scores` (`dict`: a PRM's name -> its scores of the completion's steps) with a process reward model;
    `timed_out` and `judge_unparsed` (lists of scorer names) where a scorer gave no opinion.

    From selection: `filtered_out` and `selected` (`bool`), `filtered_by` (`str` or None: the recipe key of the filter
    that removed it); `rationalized` (`bool`) on STaR's hinted samples.
    Tools add their own: best-of-N's `model`.
    """

    prompt_id: str
    prompt: list[dict]
    sample_index: int
    completion: str
    completion_tokens: int
    finished: bool
    finish_reason: str
    logprob: float
    server_template: bool
    generator: str
    round: int
    generated_at: float
    reward: float | None
    rewards: dict[str, float | None]
    verified_reward: float | None
    step_scores: dict[str, list[float]]
    timed_out: list[str]
    judge_unparsed: list[str]
    filtered_out: bool
    filtered_by: str | None
    selected: bool
    rationalized: bool
    model: str


def key(row: dict) -> Key:
    """A row's (prompt_id, sample_index)."""
    return (row["prompt_id"], row["sample_index"])


def in_key_order(rows: list[dict]) -> list[dict]:
    """Rows in (prompt_id, sample_index) order, whichever rank or generator they came from."""
    return sorted(rows, key=key)


def group_by_prompt(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by `prompt_id`, in order of first appearance.

    >>> {pid: [s["sample_index"] for s in g] for pid, g in group_by_prompt(
    ...     [{"prompt_id": "b", "sample_index": 0}, {"prompt_id": "a", "sample_index": 0},
    ...      {"prompt_id": "b", "sample_index": 1}]).items()}
    {'b': [0, 1], 'a': [0]}
    """
    groups = defaultdict(list)
    for s in rows:
        groups[s["prompt_id"]].append(s)
    return groups


def passes(row: dict, pass_threshold: float) -> bool:
    """Whether a row succeeds: its `verified_reward` where it has one (the `eval_reward_funcs` verdict, when a reward
    model gives `reward`), else its `reward`, reaches `pass_threshold`. No opinion (None) never passes.

    >>> passes({"reward": 0.2, "verified_reward": 1.0}, 1.0), passes({"reward": 1.0}, 1.0), passes({"reward": None}, 0)
    (True, True, False)
    """
    verdict = row.get("verified_reward", row["reward"])
    return verdict is not None and verdict >= pass_threshold


def with_prompt(rows: list[dict], prompt_by_id: dict[str, dict]) -> list[dict]:
    """Each row with its prompt's columns (`prompt`, `answer`, ...) joined on by `prompt_id`; the row's own keys
    win, as scorers and SFT read the prompt's columns beside the completion.

    >>> with_prompt([{"prompt_id": "a", "completion": "4"}], {"a": {"prompt_id": "a", "answer": "4"}})
    [{'prompt_id': 'a', 'answer': '4', 'completion': '4'}]
    """
    return [{**prompt_by_id[row["prompt_id"]], **row} for row in rows]


def with_scores(rows: list[dict], scores: list[dict[str, Any]]) -> list[dict]:
    """Each row with its scores' keys (`reward`, `rewards`) merged in; one score per row, in the same order.

    >>> with_scores([{"prompt_id": "a"}], [{"reward": 1.0}])
    [{'prompt_id': 'a', 'reward': 1.0}]
    """
    return [{**row, **sc} for row, sc in zip(rows, scores, strict=True)]


def normalise_completion(text: str) -> str:
    """Whitespace runs collapse to one space, ends are stripped, and case is folded: the text two completions are
    compared by (`dedupe: normalised`, `rs/unique_ratio`).

    >>> normalise_completion("  The Answer\\n is 4 ")
    'the answer is 4'
    """
    return " ".join(text.split()).casefold()
