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
    span = last_number_span(text)
    if span is None:
        return None
    try:
        return float(text[span[0] : span[1]].replace(",", ""))
    except ValueError:
        return None


def last_number_span(text: str) -> tuple[int, int] | None:
    """Where the number `final_number` reads lies in `text` (a trailing comma left out), or None: the answer a
    generative reward model scores (`rewards.likelihood`).

    >>> last_number_span("So 13 + 7 = 20."), last_number_span("no digits"), last_number_span("-3.5 then -4")
    ((12, 14), None, (10, 12))
    >>> last_number_span("It is 1,234, I think")
    (6, 11)
    """
    found = list(_NUMBER.finditer(text))
    if not found:
        return None
    return found[-1].start(), found[-1].start() + len(found[-1].group().rstrip(","))


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


# The worker processes `math_answer` checks in, and each sample's limit: set from the recipe (`verifier_workers`,
# `verifier_timeout`) by `rs_trainer.rewards.scoring.Scoring`.
VERIFIER_POOL = {"workers": 2, "timeout": 30.0}


def math_answer(prompts, completions, solution=None, answer=None, **kwargs) -> list[float | None]:
    """1.0 when the completion's answer is mathematically equal to the ground truth, else 0.0; None when a sample
    has no ground truth (or one that cannot be parsed), or when its check overran `VERIFIER_POOL["timeout"]`.

    The ground truth is the `answer` column where given, else the `solution` column (TRL's name: a worked solution
    whose `\\boxed{}` holds the answer). Both sides go through `math_verify`, so LaTeX, fractions and `\\boxed{}` are
    understood: `\\boxed{\\frac{1}{2}}` matches "0.5", `$\\sqrt{2}$` matches `2^{1/2}`. The checks run in worker
    processes that are killed when a sample overruns (`rs_trainer.rewards.pool`): math-verify's own guard does not
    stop every sympy call. The indices of the samples that overran are in `math_answer.timed_out` after the call.
    """
    from rs_trainer.rewards.pool import shared_pool

    try:
        import math_verify  # noqa: F401
    except ImportError as err:
        raise ImportError("The `math_answer` scorer needs math-verify: `pip install math-verify`.") from err

    n = len(completions)
    answers, solutions = answer or [None] * n, solution or [None] * n
    items = [
        (short if short is not None else long, _content(completion))
        for completion, short, long in zip(completions, answers, solutions, strict=True)
    ]
    pool = shared_pool(check_math_answer, VERIFIER_POOL["workers"], VERIFIER_POOL["timeout"], warm_math_verify)
    rewards, math_answer.timed_out = pool.map(items)
    return rewards


math_answer.timed_out = []


def warm_math_verify() -> None:
    """A worker's start: math-verify and sympy imported and their parsers built, before its first sample's clock."""
    from math_verify import parse

    parse("$1$")


def check_math_answer(item: tuple) -> float | None:
    """One sample of `math_answer`, in a worker: `item` is (ground truth or None, completion text).

    >>> check_math_answer(("1/2", "so it is 0.5")), check_math_answer(("7", "8"))
    (1.0, 0.0)
    >>> check_math_answer((None, "7")) is None
    True
    """
    from math_verify import parse, verify

    truth, text = item
    if truth is None:
        return None
    timeout = 5  # math-verify's own SIGALRM guard, on the worker's main thread; the pool's limit is the backstop
    gold = parse(str(truth), parsing_timeout=timeout)
    if not gold:  # a bare expression such as "x+1" parses once marked as LaTeX
        gold = parse(f"${truth}$", parsing_timeout=timeout)
    if not gold:
        return None
    got = parse(text, parsing_timeout=timeout)
    return 1.0 if got and verify(gold, got, timeout_seconds=timeout) else 0.0
