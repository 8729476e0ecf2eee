"""Reward functions in TRL's signature, referenced by dotted path from tests."""

import math


def length_reward(prompts, completions, **kwargs):
    """Longer completions score higher: gives distinct rewards on a random tiny model."""
    return [float(len(c[0]["content"])) for c in completions]


def nan_on_second(prompts, completions, **kwargs):
    return [math.nan if i == 1 else 0.0 for i in range(len(completions))]


def no_opinion(prompts, completions, **kwargs):
    return [None] * len(completions)


def slow_length_reward(prompts, completions, **kwargs):
    """`length_reward`, but with `RS_TEST_SLOW_SCORER` set it first touches that file and sleeps, so a test can
    kill the run while it is scoring."""
    import os
    import time
    from pathlib import Path

    mark = os.environ.get("RS_TEST_SLOW_SCORER")
    if mark:
        Path(mark).touch()
        time.sleep(60)
    return length_reward(prompts, completions)


def prefers_teacher(prompts, completions, generator=None, **kwargs):
    """1 for the `teacher` generator's samples, 0 for the others': a known winner for cross-generator tests."""
    return [1.0 if g == "teacher" else 0.0 for g in generator]


def variety(prompts, completions, **kwargs):
    """The number of distinct characters: a random tiny model's greedy text repeats itself, its hot samples do not."""
    return [float(len(set(c[0]["content"]))) for c in completions]


def sameness(prompts, completions, **kwargs):
    """Minus `variety`: the near-greedy temperature wins."""
    return [-v for v in variety(prompts, completions)]


def square_or_fail(x: int) -> int:
    """For `rs_trainer.rewards.pool` tests: x squared, or a ValueError for a negative x."""
    if x < 0:
        raise ValueError(f"no square of {x}")
    return x * x


def square_or_die(x: int) -> int:
    """x squared, except that 13 kills its own process, as the out-of-memory killer would."""
    import os
    import signal

    if x == 13:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def square_and_report_pid(x: int) -> tuple[int, int]:
    """(the worker's process id, x squared): the test kills the worker by that id."""
    import os

    return os.getpid(), x * x
