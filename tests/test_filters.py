"""Filters before selection, on hand-computed sample lists."""

import math

import pytest

from rs_trainer.phases import filters


def rows(rewards: dict[str, list], completions: dict[str, list] | None = None, finished: dict | None = None):
    """Samples from {prompt_id: [reward of sample 0, 1, ...]}; completions default to distinct texts."""
    out = []
    for pid, row in rewards.items():
        for j, r in enumerate(row):
            text = completions[pid][j] if completions else f"{pid}-{j}"
            done = finished[pid][j] if finished else True
            out.append(
                {
                    "prompt_id": pid,
                    "sample_index": j,
                    "reward": r,
                    "completion": text,
                    "completion_tokens": len(text),
                    "finished": done,
                }
            )
    return out


def keys(samples):
    return [(s["prompt_id"], s["sample_index"]) for s in samples]


def test_docstring_examples():
    assert filters.normalise_completion("  The Answer\n is 4 ") == "the answer is 4"
    dup = rows({"a": [0, 0, 0, 0]}, {"a": ["4", " 4", "Four", "four"]})
    assert keys(filters.drop_duplicates(dup, "normalised")) == [("a", 0), ("a", 2)]
    unf = rows({"a": [0, 0, 0]}, {"a": ["4", "4 +", "  "]}, {"a": [True, False, True]})
    assert keys(filters.drop_unfinished(unf)) == [("a", 0)]
    const = rows({"a": [1, 1, 1], "b": [0, 1, 0], "c": [0.5, None]})
    assert keys(filters.drop_constant_prompts(const)) == [("b", 0), ("b", 1), ("b", 2)]
    assert filters.reward_margin([0.0, 0.2, 0.4, 1.0]) == pytest.approx(0.7)
    assert filters.reward_margin([0.5]) == 0.0
    margin = rows({"a": [0.0, 0.2, 0.4, 1.0], "b": [0.6, 0.7, 0.9]})
    assert {pid for pid, _ in keys(filters.drop_small_margin(margin, 0.5))} == {"a"}
    both = rows({"a": [1, 1, 0]}, {"a": ["7", "7 ", "8"]})
    assert keys(filters.apply_filters(both, dedupe="normalised", drop_constant=True)) == [("a", 0), ("a", 2)]


def test_duplicates_exact_vs_normalised_keep_lowest_sample_index_whatever_the_order():
    samples = rows({"a": [0.1, 0.9, 0.5, 0.3]}, {"a": ["x = 1", "X =  1", "x = 1", "y"]})
    assert keys(filters.drop_duplicates(samples, "exact")) == [("a", 0), ("a", 1), ("a", 3)]
    # The kept copy is the first one even when a later copy scored higher (sample 1 has 0.9).
    assert keys(filters.drop_duplicates(samples, "normalised")) == [("a", 0), ("a", 3)]
    # The list order does not decide which copy survives: the smallest sample_index does.
    assert keys(filters.drop_duplicates(samples[::-1], "normalised")) == [("a", 3), ("a", 0)]
    with pytest.raises(ValueError, match="choose one of"):
        filters.drop_duplicates(samples, "fuzzy")


def test_same_text_under_different_prompts_is_not_a_duplicate():
    samples = rows({"a": [1.0], "b": [0.0]}, {"a": ["42"], "b": ["42"]})
    assert keys(filters.drop_duplicates(samples)) == [("a", 0), ("b", 0)]


def test_unfinished_and_empty_are_dropped():
    samples = rows({"a": [1.0, 1.0, 1.0, 1.0]}, {"a": ["ok", "", "\n\t", "cut"]}, {"a": [True, True, True, False]})
    assert keys(filters.drop_unfinished(samples)) == [("a", 0)]
    assert filters.drop_unfinished([]) == []


def test_constant_prompts_ties_none_and_single_sample():
    samples = rows({"tie": [0.5, 0.5], "none": [None, None], "mixed": [None, 0.1, 0.2], "n1": [0.9]})
    assert keys(filters.drop_constant_prompts(samples)) == [("mixed", 0), ("mixed", 1), ("mixed", 2)]
    # M=1, N=1: nothing to compare, nothing kept.
    assert filters.drop_constant_prompts(rows({"a": [1.0]})) == []


def test_margin_against_median_even_and_odd_counts():
    # a: sorted [0, 0.2, 0.4, 1.0] median 0.3 -> margin 0.7; b: [0.1, 0.5, 0.6] median 0.5 -> margin 0.1
    samples = rows({"a": [1.0, 0.0, 0.4, 0.2], "b": [0.5, 0.6, 0.1], "c": [None, None]})
    assert {p for p, _ in keys(filters.drop_small_margin(samples, 0.1))} == {"a", "b"}
    assert {p for p, _ in keys(filters.drop_small_margin(samples, 0.2))} == {"a"}
    assert {p for p, _ in keys(filters.drop_small_margin(samples, 0.71))} == set()
    # N=1: margin 0, kept only at min_margin 0.
    assert keys(filters.drop_small_margin(rows({"a": [0.3]}), 0.0)) == [("a", 0)]
    assert filters.drop_small_margin(rows({"a": [0.3]}), 0.01) == []
    with pytest.raises(ValueError, match=">= 0"):
        filters.drop_small_margin(samples, -1.0)


@pytest.mark.parametrize("fn", [filters.drop_constant_prompts, lambda s: filters.drop_small_margin(s, 0.1)])
def test_nan_reward_is_refused_with_the_sample_named(fn):
    with pytest.raises(ValueError, match="prompt_id 'a', sample 1"):
        fn(rows({"a": [0.1, math.nan]}))


def test_apply_filters_runs_in_order_and_can_empty_the_selection():
    # The finished "7" at index 2 survives: the truncated copy at index 0 is dropped before duplicates are looked for.
    samples = rows({"a": [1.0, 0.0, 1.0, 0.0]}, {"a": ["7", "8", "7", "8"]}, {"a": [False, True, True, True]})
    got = filters.apply_filters(samples, drop_truncated=True, dedupe="exact", drop_constant=True, min_margin=0.5)
    assert keys(got) == [("a", 1), ("a", 2)]
    assert filters.apply_filters(samples) == samples  # all off: unchanged
    assert filters.apply_filters(rows({"a": [0.0, 0.0]}), drop_constant=True) == []
    assert filters.apply_filters([], drop_truncated=True, dedupe="normalised", drop_constant=True, min_margin=0) == []


def test_apply_recipe_filters_reads_the_recipe_keys():
    from types import SimpleNamespace

    args = SimpleNamespace(
        drop_truncated=False, dedupe="normalised", drop_constant_prompts=False, min_reward_margin=None
    )
    assert keys(filters.apply_recipe_filters(rows({"a": [1, 1]}, {"a": ["7", "7 "]}), args)) == [("a", 0)]
    args.drop_constant_prompts = True
    assert filters.apply_recipe_filters(rows({"a": [1, 1]}, {"a": ["7", "8"]}), args) == []
