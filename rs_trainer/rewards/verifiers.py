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
    for completion, truth in zip(completions, answer, strict=True):
        if truth is None:
            rewards.append(None)
            continue
        expected = final_number(str(truth))
        got = final_number(_content(completion))
        rewards.append(1.0 if expected is not None and got is not None and abs(got - expected) < 1e-9 else 0.0)
    return rewards


def math_answer(prompts, completions, solution=None, answer=None, **kwargs) -> list[float | None]:
    """1.0 when the completion's answer is mathematically equal to the ground truth, else 0.0; None when a sample
    has no ground truth (or one that cannot be parsed).

    The ground truth is the `answer` column where given, else the `solution` column (TRL's name: a worked solution
    whose `\\boxed{}` holds the answer). Both sides go through `math_verify`, so LaTeX, fractions and `\\boxed{}` are
    understood: `\\boxed{\\frac{1}{2}}` matches "0.5", `$\\sqrt{2}$` matches `2^{1/2}`.
    """
    import threading

    try:
        from math_verify import parse, verify
    except ImportError as err:
        raise ImportError("The `math_answer` scorer needs math-verify: `pip install math-verify`.") from err

    # math_verify's timeouts use SIGALRM, which only the main thread may set; elsewhere run without them.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    n = len(completions)
    answers, solutions = answer or [None] * n, solution or [None] * n
    rewards = []
    for completion, short, long in zip(completions, answers, solutions, strict=True):
        truth = short if short is not None else long
        gold = [] if truth is None else parse(str(truth), parsing_timeout=timeout)
        if truth is not None and not gold:  # a bare expression such as "x+1" parses once marked as LaTeX
            gold = parse(f"${truth}$", parsing_timeout=timeout)
        if not gold:
            rewards.append(None)
            continue
        got = parse(_content(completion), parsing_timeout=timeout)
        rewards.append(1.0 if got and verify(gold, got, timeout_seconds=timeout) else 0.0)
    return rewards
