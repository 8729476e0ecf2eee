"""The watch on reward hacking (`rs_trainer.run.metrics.watch_metrics`, `proxy_gold_turn`): hand-computed rounds."""

import pytest

from rs_trainer.run.metrics import proxy_gold_turn, round_metrics, watch_metrics


def rows(table: dict[str, list[tuple]]) -> list[dict]:
    """{prompt_id: [(proxy, gold), ...]} -> rows, sample_index by position."""
    return [
        {"prompt_id": pid, "sample_index": i, "reward": proxy, "verified_reward": gold, "completion": f"{pid}{i}"}
        | {"completion_tokens": 3, "finished": True}
        for pid, samples in table.items()
        for i, (proxy, gold) in enumerate(samples)
    ]


# Three prompts, the proxy a reward model's score, the gold a verifier's 0/1:
#   a: (0.9, 0) (0.2, 1) (0.5, 1)   decidable; the proxy prefers the wrong one; selected a0
#   b: (0.1, 1) (0.3, 1)            all pass: not decidable; selected b1
#   c: (0.4, 0) (0.7, 1) (0.4, 1)   decidable; selected c1 (passes)
TABLE = {
    "a": [(0.9, 0.0), (0.2, 1.0), (0.5, 1.0)],
    "b": [(0.1, 1.0), (0.3, 1.0)],
    "c": [(0.4, 0.0), (0.7, 1.0), (0.4, 1.0)],
}
SELECTED = {("a", 0), ("b", 1), ("c", 1)}


def test_watch_metrics_by_hand():
    got = watch_metrics(rows(TABLE), SELECTED, pass_threshold=1.0)
    # Pairs whose gold differs: a0-a1, a0-a2 (both wrong way), c0-c1 (right), c0-c2 (proxy tie: half) -> 1.5 / 4.
    assert got["watch/pairwise_agreement"] == 1.5 / 4
    assert got["watch/decidable_share"] == 2 / 3
    # Picks on the decidable prompts: a0 fails, c1 passes -> 1/2; a random pick passes 2/3 on each of a and c.
    assert got["watch/decidable_pick_pass_rate"] == 0.5
    assert got["watch/decidable_random_pass_rate"] == pytest.approx(2 / 3, abs=1e-12)  # (2/3 + 2/3) / 2, rounding
    assert got["watch/gold_mean"] == 6 / 8 and got["watch/gold_selected_mean"] == 2 / 3


def test_a_proxy_that_agrees_with_the_gold_picks_better_than_chance():
    agreeing = {pid: [(gold + 0.1 * i, gold) for i, (_, gold) in enumerate(s)] for pid, s in TABLE.items()}
    best = {("a", 2), ("b", 1), ("c", 2)}  # the highest proxy of each prompt
    got = watch_metrics(rows(agreeing), best, pass_threshold=1.0)
    assert got["watch/pairwise_agreement"] == 1.0 and got["watch/decidable_pick_pass_rate"] == 1.0
    constant = {pid: [(0.5, gold) for _, gold in s] for pid, s in TABLE.items()}
    assert watch_metrics(rows(constant), best, pass_threshold=1.0)["watch/pairwise_agreement"] == 0.5


def test_round_metrics_watch_only_where_a_gold_reward_is_kept():
    with_gold = round_metrics(rows(TABLE), SELECTED, pass_threshold=1.0)
    assert with_gold["watch/decidable_share"] == 2 / 3
    proxy_only = [{k: v for k, v in r.items() if k != "verified_reward"} for r in rows(TABLE)]
    assert not any(k.startswith("watch/") for k in round_metrics(proxy_only, SELECTED, pass_threshold=1.0))


def test_the_proxy_rising_while_the_gold_falls_is_named():
    first = {"round": 0, "rs/selected_reward_mean": 0.5, "watch/gold_selected_mean": 0.8}
    up_down = {"round": 1, "rs/selected_reward_mean": 0.9, "watch/gold_selected_mean": 0.7}
    assert proxy_gold_turn(first, up_down).startswith("round 1: the proxy reward of the selected samples rose")
    both_up = {**up_down, "watch/gold_selected_mean": 0.9}
    assert proxy_gold_turn(first, both_up) is None
    assert proxy_gold_turn(None, up_down) is None
    assert proxy_gold_turn(first, {**up_down, "watch/gold_selected_mean": None}) is None


def test_a_selected_sample_without_a_reward_is_counted_but_not_averaged():
    """A matched-random control draws among all of a prompt's samples, so it may keep one its scorer had no opinion
    on (reward None: a generative reward model's completion without a number): a real run stopped on it."""
    table = {"a": [(None, 0.0), (-0.5, 1.0)], "b": [(-2.0, 0.0), (-1.0, 1.0)]}
    got = round_metrics(rows(table), {("a", 0), ("b", 1)}, pass_threshold=1.0)
    assert got["rs/num_selected"] == 2 and got["rs/acceptance_rate"] == 0.5
    assert got["rs/selected_reward_mean"] == -1.0 and got["rs/selected_reward_max"] == -1.0
    assert got["rs/reward_mean"] == pytest.approx(-3.5 / 3, abs=1e-12)  # the three rewards given, float rounding
    assert got["rs/selected_pass_rate"] == 0.5
