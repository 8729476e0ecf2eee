"""Verifiers: rewards computed against a ground-truth column of the dataset."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The last number in `text` (commas as thousands separators allowed), or None.

    >>> final_number("3 + 4 = 7.")
    7.0
    >>> final_number("no digits") is None
    True
    """
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _content(completion) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


def numeric_answer(prompts, completions, answer, **kwargs) -> list[float | None]:
    """1.0 when the completion's final number equals the `answer` column, else 0.0; None when no ground truth."""
    rewards = []
    for completion, truth in zip(completions, answer):
        if truth is None:
            rewards.append(None)
            continue
        expected = final_number(str(truth))
        got = final_number(_content(completion))
        rewards.append(1.0 if expected is not None and got is not None and abs(got - expected) < 1e-9 else 0.0)
    return rewards
