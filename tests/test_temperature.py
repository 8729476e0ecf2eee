"""`temperature: auto`: the probe's choice (pure), and a real run on the tiny model whose round samples at the
temperature the probe chose."""

import json

import pytest
from helpers import recipe_args

from rs_trainer.cli import main
from rs_trainer.config import RSConfig
from rs_trainer.errors import ConfigError
from rs_trainer.phases.temperature import choose_temperature, probe_metrics, probe_prompts
from rs_trainer.run.io import read_jsonl


def test_the_best_expected_best_of_n_wins_not_the_best_mean():
    rewards = {0.6: {"a": [0, 0], "b": [1, 1]}, 1.0: {"a": [0, 1], "b": [1, 0]}}
    best, table = choose_temperature(rewards, 2)
    assert best == 1.0
    assert table == [
        {"temperature": 0.6, "best_of_n": 0.5, "mean_reward": 0.5},
        {"temperature": 1.0, "best_of_n": 1.0, "mean_reward": 0.5},
    ]
    # Best-of-1 is the mean: a tie, which the lower temperature takes.
    assert choose_temperature(rewards, 1)[0] == 0.6


def test_ties_go_to_the_higher_mean_then_the_lower_temperature_and_none_counts_as_the_floor():
    rewards = {0.8: {"a": [1, 0, 0]}, 1.2: {"a": [1, 1, 0]}, 0.6: {"a": [0, 1, 1]}}
    assert choose_temperature(rewards, 3)[0] == 0.6  # all three reach 1; 0.6 and 1.2 share the higher mean
    best, table = choose_temperature({0.5: {"a": [None, 2.0]}, 0.9: {"a": [1.0, 1.0]}}, 2)
    assert best == 0.5 and table[0]["mean_reward"] == 1.5  # None -> 1.0, the lowest reward seen
    metrics = probe_metrics(table, best, extra_tokens=7)
    assert metrics["probe/temperature"] == 0.5 and metrics["probe/T=0.9/best_of_n"] == 1.0
    assert metrics["probe/extra_tokens"] == 7


def test_the_probe_prompts_are_a_seeded_subset_in_round_order():
    prompts = [{"prompt_id": f"p{i}"} for i in range(20)]
    a = probe_prompts(prompts, 5, seed=1, round_index=0)
    assert a == probe_prompts(prompts, 5, seed=1, round_index=0)
    assert len(a) == 5 and a == sorted(a, key=prompts.index)
    assert a != probe_prompts(prompts, 5, seed=1, round_index=1)
    assert probe_prompts(prompts, 50, seed=1, round_index=0) == prompts


def test_temperature_takes_numbers_or_auto_and_refuses_anything_else():
    assert RSConfig(temperature=["auto", 0.7]).temperature == ["auto", 0.7]
    assert RSConfig(temperature=["0.9"]).temperature == [0.9]
    with pytest.raises(ConfigError, match="give a number or `auto`"):
        RSConfig(temperature=["hot"])
    with pytest.raises(ConfigError, match="temperature_grid"):
        RSConfig(temperature=["auto"], temperature_grid=[0.0, 1.0])


@pytest.mark.parametrize(("reward", "expected"), [("variety", 50.0), ("sameness", 0.01)])
def test_an_auto_round_samples_at_the_temperature_its_probe_chose(tiny_model, tmp_path, reward, expected):
    out = tmp_path / "o"
    argv = recipe_args(
        tiny_model,
        out,
        task_num_train=6,
        num_generations=3,
        max_completion_length=8,
        temperature="auto",
        temperature_grid=[0.01, 50.0],
        temperature_probe_prompts=2,
        reward_funcs=[f"tests.scorers_for_tests.{reward}"],
        report_to="none",
    )
    assert main(argv) == 0
    probe = json.loads((out / "round_0" / "temperature_probe.json").read_text())
    assert probe["temperature"] == expected and probe["prompts"] == 2
    assert [row["temperature"] for row in probe["table"]] == [0.01, 50.0]
    metrics = json.loads((out / "round_0" / "metrics.json").read_text())
    assert metrics["rs/temperature"] == expected and metrics["probe/temperature"] == expected
    assert metrics["probe/extra_tokens"] > 0 and "timing/temperature_probe" in metrics
    rows = read_jsonl(out / "round_0" / "generations.jsonl")
    assert len(rows) == 6 * 3 and len({(x["prompt_id"], x["sample_index"]) for x in rows}) == 18
    first = min(x["generated_at"] for x in rows)  # the probe's rows at the chosen temperature, kept, not redone
    assert len({x["prompt_id"] for x in rows if x["generated_at"] == first}) == 2
    # Every prompt, the probe's two included, was sampled at the chosen temperature: near 0 its 3 samples agree.
    texts = {}
    for x in rows:
        texts.setdefault(x["prompt_id"], set()).add(x["completion"])
    distinct = [len(t) for t in texts.values()]
    assert (max(distinct) == 1) if expected == 0.01 else (min(distinct) == 3), distinct
