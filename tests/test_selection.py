import math

import pytest

from rs_trainer.config import RSConfig
from rs_trainer.phases import selection


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
        ({"selection": "top_k", "selection_top_k": 2}, [("a", 3), ("a", 1)]),
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


# ---- the matched-random control


@pytest.mark.parametrize(
    "overrides",
    [
        {"selection": "best_of_n", "min_reward": 0.5},
        {"selection": "top_k", "selection_top_k": 2},
        {"selection": "threshold", "reward_threshold": 0.6},
        {"selection": "top_k_per_prompt", "k_per_prompt": 3},
    ],
)
def test_matched_random_keeps_as_many_per_prompt_as_its_rule_drawn_among_every_candidate(overrides):
    samples = matrix(REWARDS, LENGTHS)
    rule = selection.select(samples, RSConfig(**overrides), seed=0)
    control = RSConfig(**overrides, matched_random=True)
    drawn = {seed: selection.select(samples, control, seed=seed) for seed in range(40)}

    def per_prompt(keys):
        return {pid: sum(p == pid for p, _ in keys) for pid in "abc"}

    for keys in drawn.values():
        assert per_prompt(keys) == per_prompt(rule)
        assert len(set(keys)) == len(keys) and set(keys) <= {(s["prompt_id"], s["sample_index"]) for s in samples}
    assert selection.select(samples, control, seed=7) == drawn[7]  # seeded
    # Over 40 seeds the draws differ, and samples the rule never keeps (reward 0.1 or 0.2) turn up: a draw of every
    # candidate, not of the eligible ones.
    assert len({tuple(keys) for keys in drawn.values()}) > 1
    picked = {k for keys in drawn.values() for k in keys}
    assert picked - set(rule) and ({("a", 0), ("c", 1)} & picked)


def test_matched_random_draws_with_the_rounds_seed_per_prompt():
    """A prompt's draw depends on (round seed, prompt_id) only: other prompts do not shift it."""
    samples = matrix(REWARDS, LENGTHS)
    alone = selection.matched_random([s for s in samples if s["prompt_id"] == "c"], [("c", 2)], seed=5)
    together = selection.matched_random(samples, [("a", 3), ("c", 2)], seed=5)
    assert alone == [k for k in together if k[0] == "c"]
    assert alone == [("c", seeds_sample(5, "c", [0, 1, 2, 3]))]


def seeds_sample(seed, pid, indices):
    from rs_trainer.run import seeds

    return seeds.matched_random_rng(seed, pid).sample(indices, 1)[0]


# ---- per-prompt percentile and rising schedules (ReST)


def test_percentile_docstring_examples():
    assert selection.percentile_value([0.0, 1.0, 2.0, 3.0], 50) == 1.5
    assert selection.percentile_value([0.0, 1.0, 2.0, 3.0], 100) == 3.0
    assert selection.percentile_value([4.0], 37) == 4.0
    got = selection.percentile_per_prompt(matrix({"a": [0.0, 1.0, 2.0, 3.0], "b": [5.0, 5.0]}), 50)
    assert got[:2] == [("a", 3), ("a", 2)] and sorted(got[2:]) == [("b", 0), ("b", 1)]
    assert selection.schedule_value([50, 75, 90], 1) == 75
    assert selection.schedule_value([50, 75, 90], 5) == 90


@pytest.mark.parametrize(
    "q, expected",
    [
        # a sorted [0.1, 0.5, 0.9, 0.9]; c sorted [0.2, 0.3, 0.7, 0.8]; b all 0.0 (ties: all kept, shortest first)
        (
            0,
            [("a", 3), ("a", 1), ("a", 2), ("a", 0), ("b", 2), ("b", 1), ("b", 0), ("b", 3)]
            + [("c", 2), ("c", 0), ("c", 3), ("c", 1)],
        ),
        (50, [("a", 3), ("a", 1), ("b", 2), ("b", 1), ("b", 0), ("b", 3), ("c", 2), ("c", 0)]),  # cuts 0.7, 0, 0.5
        (100, [("a", 3), ("a", 1), ("b", 2), ("b", 1), ("b", 0), ("b", 3), ("c", 2)]),  # the maxima, ties kept
    ],
)
def test_percentile_per_prompt_on_the_hand_computed_matrix(q, expected):
    assert selection.percentile_per_prompt(matrix(REWARDS, LENGTHS), q, seed=0) == expected


def test_percentile_per_prompt_cap_min_reward_and_edge_shapes():
    samples = matrix(REWARDS, LENGTHS)
    assert selection.percentile_per_prompt(samples, 50, cap_per_prompt=1) == [("a", 3), ("b", 2), ("c", 2)]
    assert selection.percentile_per_prompt(samples, 0, min_reward=0.6) == [("a", 3), ("a", 1), ("c", 2), ("c", 0)]
    # N=1: a prompt's single sample is its own percentile, at any q.
    assert selection.percentile_per_prompt(matrix({"a": [0.2], "b": [0.7]}), 90) == [("a", 0), ("b", 0)]
    # M=1, and None rewards take no part in the percentile.
    assert selection.percentile_per_prompt(matrix({"a": [None, 0.4, 0.8]}), 50) == [("a", 2)]
    # Empty selections.
    assert selection.percentile_per_prompt(matrix({"a": [None, None]}), 50) == []
    assert selection.percentile_per_prompt([], 50) == []
    assert selection.percentile_per_prompt(samples, 100, min_reward=2.0) == []
    with pytest.raises(ValueError, match="prompt_id 'a', sample 1"):
        selection.percentile_per_prompt(matrix({"a": [0.1, math.nan]}), 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        selection.percentile_per_prompt(samples, 101)


def test_schedules_refuse_falling_or_empty_values():
    with pytest.raises(ValueError, match="falls at round 2"):
        selection.schedule_value([50, 80, 70], 0)
    with pytest.raises(ValueError, match="empty"):
        selection.schedule_value([], 0)


def test_select_percentile_follows_the_schedule_per_round():
    from types import SimpleNamespace

    args = SimpleNamespace(
        selection="percentile",
        reward_percentile=[0, 100],
        max_per_prompt=None,
        min_reward=None,
        prefer_shorter=True,
        matched_random=False,
    )
    samples = matrix(REWARDS, LENGTHS)
    assert len(selection.select(samples, args, seed=0, round_index=0)) == 12  # q=0 keeps everything
    assert selection.select(samples, args, seed=0, round_index=3) == selection.percentile_per_prompt(samples, 100)


def test_rso_accepts_in_proportion_to_exp_reward_over_beta():
    """k=1, uniform proposal: over many seeds the accepted sample follows exp(r/β); chi-square at a fixed seed."""
    import math

    from rs_trainer.phases.selection import statistical_rejection

    rewards, beta, trials = [1.0, 0.5, 0.0, -0.5, 0.9], 0.5, 4000
    samples = [
        {"prompt_id": "p", "sample_index": i, "reward": r, "completion_tokens": 3} for i, r in enumerate(rewards)
    ]
    counts = [0] * len(rewards)
    for seed in range(trials):
        (key,) = statistical_rejection(samples, k=1, beta=beta, seed=seed)
        counts[key[1]] += 1
    weights = [math.exp(r / beta) for r in rewards]
    expected = [trials * w / sum(weights) for w in weights]
    chi2 = sum((c - e) ** 2 / e for c, e in zip(counts, expected, strict=True))
    assert chi2 < 13.28, (counts, expected, chi2)  # the 99% quantile of chi-square with 4 degrees of freedom
    # The draw is seeded: the same seed, the same choice.
    assert statistical_rejection(samples, 1, beta, seed=7) == statistical_rejection(samples, 1, beta, seed=7)


def test_rso_tends_to_best_of_n_and_to_uniform():
    from rs_trainer.phases.selection import best_of_n, statistical_rejection

    samples = [
        {"prompt_id": p, "sample_index": i, "reward": r, "completion_tokens": 3}
        for p, rs in {"a": [0.2, 0.9, 0.5], "b": [0.7, 0.1, 0.3]}.items()
        for i, r in enumerate(rs)
    ]
    for seed in range(50):  # β -> 0: only the best reward is ever accepted
        assert sorted(statistical_rejection(samples, 1, 1e-6, seed=seed)) == sorted(best_of_n(samples))
    picks = {statistical_rejection(samples, 1, 1e6, seed=seed)[0] for seed in range(200)}
    assert picks == {("a", 0), ("a", 1), ("a", 2)}  # β -> ∞: every candidate of prompt a is drawn
    # k per prompt, without replacement, and min_reward respected.
    keys = statistical_rejection(samples, 2, 0.3, seed=1, min_reward=0.25)
    assert len(keys) == len(set(keys)) == 4 and ("b", 1) not in keys and ("a", 0) not in keys


def test_rso_is_a_selection_strategy_with_a_beta_per_round():
    from rs_trainer.config import RSConfig
    from rs_trainer.errors import ConfigError
    from rs_trainer.phases.selection import select

    args = RSConfig(selection="rso", rso_beta=[1e-6, 1e6], k_per_prompt=1)
    samples = [
        {"prompt_id": "a", "sample_index": i, "reward": r, "completion_tokens": 3} for i, r in enumerate([0.1, 0.9])
    ]
    assert select(samples, args, seed=0, round_index=0) == [("a", 1)]
    assert {select(samples, args, seed=s, round_index=1)[0] for s in range(40)} == {("a", 0), ("a", 1)}
    with pytest.raises(ConfigError, match="`rso_beta` values must be > 0"):
        RSConfig(selection="rso", rso_beta=[0.0])
    with pytest.raises(ConfigError, match="`rso_beta` is set but `selection` is 'best_of_n'"):
        RSConfig(selection="best_of_n", rso_beta=[0.2])
