"""Best-of-N inference: the order-statistics estimator against brute force, and the entry point end to end on tiny
random Llamas (one policy, then two competing models)."""

import itertools
import json
import math
import random
import statistics

import pytest
from helpers import build_tiny_model, recipe_args

from rs_trainer.cli import best_of_n_main
from rs_trainer.errors import ConfigError
from rs_trainer.phases import estimators
from rs_trainer.run.browser import read_counts
from rs_trainer.run.io import read_jsonl
from rs_trainer.tools import best_of_n


def brute_force(rewards: list[float], n: int) -> float:
    return statistics.fmean(max(subset) for subset in itertools.combinations(rewards, n))


def test_docstring_examples():
    assert estimators.expected_best_of_n([2.0, 0.0, 1.0], 2) == pytest.approx(5 / 3)
    assert estimators.expected_best_of_n([2.0, 0.0, 1.0], 1) == 1.0
    assert estimators.expected_best_of_n([2.0, 0.0, 1.0], 3) == 2.0
    assert estimators.best_of_n_curve([[0.0, 1.0], [1.0, 1.0]]) == [0.75, 1.0]
    assert estimators.kl_bound(1) == 0.0
    assert estimators.kl_bound(4) == pytest.approx(0.636, abs=1e-3)
    samples = [
        {"prompt_id": "a", "sample_index": 0, "model": "x", "reward": 0.2, "completion": "u", "completion_tokens": 1},
        {"prompt_id": "a", "sample_index": 1, "model": "y", "reward": 0.9, "completion": "v", "completion_tokens": 1},
    ]
    (row,) = best_of_n.prompt_rows([{"prompt_id": "a", "prompt": []}], samples, seed=0, prefer_shorter=True)
    assert (row["best"]["model"], row["best"]["sample_index"]) == ("y", 1) and len(row["candidates"]) == 2
    y_best = {"model": "y", "reward": 1.0}
    rows = [{"best": y_best, "candidates": [{"model": "x", "reward": 0.0}, y_best]}]
    metrics = best_of_n.summarise(rows, ["x", "y"], samples_per_model=1, pass_threshold=1.0)
    assert metrics["expected_reward"] == [0.5, 1.0]
    assert metrics["kl_bound"] == [0.0, pytest.approx(0.193, abs=1e-3)]
    assert metrics["per_model"]["y"]["best_share"] == 1.0 and metrics["per_model"]["x"]["best_share"] == 0.0


@pytest.mark.parametrize(
    "rewards",
    [
        [0.3, -1.0, 0.3, 2.5, 0.0, 0.7],  # ties and negatives
        [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0],  # a verifier's 0/1
        [4.0],  # N=1
        [0.1] * 5,  # all equal
    ],
)
def test_estimator_matches_brute_force_over_every_subset(rewards):
    for n in range(1, len(rewards) + 1):
        assert estimators.expected_best_of_n(rewards, n) == pytest.approx(brute_force(rewards, n), abs=1e-12)


def test_estimator_is_exactly_monotone_and_refuses_bad_input():
    rng = random.Random(0)
    for _ in range(50):
        rewards = [[rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(9)] for _ in range(3)]
        curve = estimators.best_of_n_curve(rewards)
        assert all(a <= b for a, b in itertools.pairwise(curve))  # exact: no rounding dip, even with ties
    assert estimators.best_of_n_curve([[0.1] * 7]) == [0.1] * 7
    with pytest.raises(ValueError, match="n must be in 1..3"):
        estimators.expected_best_of_n([1.0, 2.0, 3.0], 4)
    with pytest.raises(ValueError, match="finite"):
        estimators.expected_best_of_n([1.0, math.nan], 1)
    with pytest.raises(ValueError, match="same number"):
        estimators.best_of_n_curve([[1.0], [1.0, 2.0]])


def check_outputs(out, num_prompts: int, candidates: int) -> tuple[list[dict], dict]:
    rows = read_jsonl(out / "best_of_n.jsonl")
    metrics = json.loads((out / "best_of_n_metrics.json").read_text())
    assert len(rows) == num_prompts and metrics["num_prompts_in_curve"] == num_prompts
    assert metrics["n"] == list(range(1, candidates + 1))
    curve = metrics["expected_reward"]
    assert all(a <= b for a, b in itertools.pairwise(curve)), curve
    assert curve[0] == pytest.approx(statistics.fmean(c["reward"] for r in rows for c in r["candidates"]))
    assert curve[-1] == pytest.approx(statistics.fmean(r["best"]["reward"] for r in rows))
    assert metrics["kl_bound"][0] == 0.0 and metrics["kl_bound"][-1] == pytest.approx(
        math.log(candidates) - (candidates - 1) / candidates
    )
    assert metrics["timing/generate"] > 0
    png = out / "best_of_n.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    for r in rows:
        assert len(r["candidates"]) == candidates
        assert [c["sample_index"] for c in r["candidates"]] == list(range(candidates))
        assert r["best"]["reward"] == max(c["reward"] for c in r["candidates"])
        assert r["best"] in r["candidates"]
    # The run browser's page: every candidate, the best of each prompt selected (tests/test_browser.py opens one).
    counts = read_counts(out / "best_of_n_page.js")
    assert counts["samples"] == num_prompts * candidates and counts["prompts"] == num_prompts
    assert counts["selected"] == num_prompts and (out / "index.html").stat().st_size > counts["samples"]
    return rows, metrics


@pytest.mark.slow
def test_entry_point_end_to_end(tiny_model, tmp_path, capsys):
    out = tmp_path / "bon"
    argv = recipe_args(
        tiny_model,
        out,
        num_generations=4,
        prompts_per_round=3,
        max_completion_length=6,
        reward_funcs=["tests.scorers_for_tests.length_reward"],
    )
    assert best_of_n_main(argv) == 0
    rows, metrics = check_outputs(out, num_prompts=3, candidates=4)
    assert {c["model"] for r in rows for c in r["candidates"]} == {str(tiny_model)}
    # Length rewards differ on a random model: best-of-4 beats one sample.
    assert metrics["expected_reward"][-1] > metrics["expected_reward"][0]
    assert "expected best-of-n reward over 3 prompts" in capsys.readouterr().out


@pytest.mark.slow
def test_heterogeneous_candidates_compete_alike(tiny_model, tmp_path, embedded_path):
    other = build_tiny_model(tmp_path / "other", embedded_path, seed=1)
    out = tmp_path / "bon"
    argv = recipe_args(
        tiny_model,
        out,
        num_generations=3,
        prompts_per_round=2,
        max_completion_length=6,
        reward_funcs=["tests.scorers_for_tests.length_reward"],
    )
    metrics = best_of_n.run(*best_of_n_args(argv), candidate_models=[str(other)])
    rows, on_disk = check_outputs(out, num_prompts=2, candidates=6)
    assert on_disk["models"] == [str(tiny_model), str(other)] == metrics["models"]
    for r in rows:  # model m wrote sample indices m*N .. m*N + N-1
        assert [c["model"] for c in r["candidates"]] == [str(tiny_model)] * 3 + [str(other)] * 3
    shares = [on_disk["per_model"][m]["best_share"] for m in on_disk["models"]]
    assert sum(shares) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="named twice"):
        best_of_n.run(*best_of_n_args(argv), candidate_models=[str(tiny_model)])


def best_of_n_args(argv):
    from rs_trainer.cli import parse_args

    return parse_args(argv)
