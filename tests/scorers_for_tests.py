"""Reward functions in TRL's signature, referenced by dotted path from tests."""

import math


def length_reward(prompts, completions, **kwargs):
    """Longer completions score higher: gives distinct rewards on a random tiny model."""
    return [float(len(c[0]["content"])) for c in completions]


def nan_on_second(prompts, completions, **kwargs):
    return [math.nan if i == 1 else 0.0 for i in range(len(completions))]


def no_opinion(prompts, completions, **kwargs):
    return [None] * len(completions)
