import math

import pytest

from rs_trainer import selection
from rs_trainer.config import RSConfig


def matrix(rewards: dict[str, list], lengths: dict[str, list] | None = None) -> list[dict]:
    """Samples from a reward matrix {prompt_id: [reward of sample 0, 1, ...]}."""
    rows = []
    for pid, row in rewards.items():
        for j, r in enumerate(row):
            length = lengths[pid][j] if lengths else 10
            rows.append({"prompt_id": pid, "sample_index": j, "reward": r, "completion_tokens": length})
    return rows


# The hand-computed matrix used below (M=3 prompts, N=4 samples):
#        s0   s1   s2   s3
#   a   0.1  0.9  0.5  0.9     (s1 and s3 tie; s3 is shorter)
#   b   0.0  0.0  0.0  0.0
#   c   0.7  0.2  0.8  0.3
REWARDS = {"a": [0.1, 0.9, 0.5, 0.9], "b": [0.0, 0.0, 0.0, 0.0], "c": [0.7, 0.2, 0.8, 0.3]}
LENGTHS = {"a": [5, 9, 5, 4], "b": [3, 2, 1, 4], "c": [5, 5, 5, 5]}


def test_best_of_n_takes_row_argmax_and_breaks_ties_by_length():
    got = selection.best_of_n(matrix(REWARDS, LENGTHS), seed=0)
    assert got == [("a", 3), ("b", 2), ("c", 2)]


def test_best_of_n_min_reward_drops_prompts_with_nothing_good():
    got = selection.best_of_n(matrix(REWARDS, LENGTHS), seed=0, min_reward=0.5)
    assert got == [("a", 3), ("c", 2)]


def test_top_k_per_prompt():
    got = selection.top_k_per_prompt(matrix(REWARDS, LENGTHS), 2, seed=0, min_reward=0.25)
    assert got == [("a", 3), ("a", 1), ("c", 2), ("c", 0)]


def test_global_top_k_over_flattened_matrix():
    got = selection.top_k_global(matrix(REWARDS, LENGTHS), 4, seed=0)
    assert got == [("a", 3), ("a", 1), ("c", 2), ("c", 0)]


def test_threshold_absolute_and_capped():
    samples = matrix(REWARDS, LENGTHS)
    assert set(selection.threshold(samples, 0.5, seed=0)) == {("a", 1), ("a", 2), ("a", 3), ("c", 0), ("c", 2)}
    assert selection.threshold(samples, 0.5, cap_per_prompt=1, seed=0) == [("a", 3), ("c", 2)]


def test_docstring_examples():
    assert selection.best_of_n(matrix({"a": [0.2, 0.9], "b": [0.5, 0.1]})) == [("a", 1), ("b", 0)]
    assert selection.top_k_global(matrix({"a": [0.1, 0.8], "b": [0.9, 0.3]}), 2) == [("b", 0), ("a", 1)]
    assert selection.threshold(matrix({"a": [0.6, 0.7], "b": [0.4]}), 0.5, cap_per_prompt=1) == [("a", 1)]
    example = matrix({"a": [1, 0, 1]}, {"a": [9, 3, 4]})
    assert selection.top_k_per_prompt(example, 1) == [("a", 2)]


def test_exact_ties_are_broken_by_seed_deterministically():
    samples = matrix({"a": [1.0] * 8})
    picks = {seed: selection.best_of_n(samples, seed=seed) for seed in range(20)}
    assert all(selection.best_of_n(samples, seed=s) == p for s, p in picks.items())  # same seed, same pick
    assert len({p[0][1] for p in picks.values()}) > 1  # no sample position is always favoured


def test_none_rewards_are_never_selected_and_nan_is_refused():
    assert selection.best_of_n(matrix({"a": [None, None]})) == []
    assert selection.best_of_n(matrix({"a": [None, 0.3]})) == [("a", 1)]
    with pytest.raises(ValueError, match="prompt_id 'a', sample 1"):
        selection.best_of_n(matrix({"a": [0.1, math.nan]}))


def test_duplicate_prompt_texts_with_different_ids_stay_separate():
    samples = matrix({"x1": [0.1, 0.2], "x2": [0.3, 0.4]})
    for s in samples:
        s["prompt"] = "same text"
    assert selection.best_of_n(samples) == [("x1", 1), ("x2", 1)]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"selection": "best_of_n"}, [("a", 3), ("b", 2), ("c", 2)]),
        ({"selection": "top_k", "top_k": 2}, [("a", 3), ("a", 1)]),
        ({"selection": "top_fraction", "top_fraction": 0.25}, [("a", 3), ("a", 1), ("c", 2)]),
        ({"selection": "threshold", "reward_threshold": 0.75}, [("a", 3), ("a", 1), ("c", 2)]),
        (
            {"selection": "top_k_per_prompt", "k_per_prompt": 2, "min_reward": 0.6},
            [("a", 3), ("a", 1), ("c", 2), ("c", 0)],
        ),
    ],
)
def test_select_dispatches_each_recipe_strategy(overrides, expected):
    args = RSConfig(**overrides)
    assert selection.select(matrix(REWARDS, LENGTHS), args, seed=0) == expected
