"""STaR rationalization on the embedded SmolLM2-135M: prompts that no sample solved are sampled again with the
answer as a hint, and what passes is trained on without the hint."""

import json

import pytest
from helpers import recipe_args

from rs_trainer.cli import main
from rs_trainer.run.io import read_jsonl

pytestmark = pytest.mark.slow


def test_rationalization_rescues_unsolved_prompts_and_trains_without_the_hint(embedded_path, tmp_path):
    out = tmp_path / "o"
    argv = recipe_args(
        embedded_path,
        out,
        task_num_train=6,
        task_min_operand=10,
        task_max_operand=99,
        num_generations=2,
        max_completion_length=12,
        temperature=0.7,
        selection="best_of_n",
        selection_top_k=None,
        min_reward=1.0,
        reward_funcs=["numeric_answer"],
        dataset_test_split=None,
        report_to="none",
        use_peft=True,
        lora_target_modules=["q_proj", "v_proj"],
        learning_rate=1e-4,
        rationalize=True,
        rationalization_samples=4,
    )
    assert main(argv) == 0
    rows = read_jsonl(out / "round_0" / "generations.jsonl")
    own = [x for x in rows if not x.get("rationalized")]
    hinted = [x for x in rows if x.get("rationalized")]
    solved = {x["prompt_id"] for x in own if x["reward"] == 1.0}
    assert len(own) == 12 and len(solved) < 6, "every prompt was solved; nothing to rationalize"
    assert {x["prompt_id"] for x in hinted} == {f"train-{i:05d}" for i in range(6)} - solved
    assert all(x["generator"] == "rationalization" and x["sample_index"] >= 2 for x in hinted)
    rescued = [x for x in hinted if x["selected"]]
    assert rescued, "no hinted sample reached the answer"
    for x in rescued:
        assert x["reward"] == 1.0 and x["answer"] in x["completion"]
        assert "Hint" not in json.dumps(x["prompt"])  # stored, scored and trained without the hint
    sft = {(x["prompt_id"], x["sample_index"]): x for x in read_jsonl(out / "round_0" / "sft.jsonl")}
    assert all("Hint" not in json.dumps(sft[(x["prompt_id"], x["sample_index"])]["prompt"]) for x in rescued)
    metrics = json.loads((out / "round_0" / "metrics.json").read_text())
    assert metrics["rs/rationalized"] == len(rescued) and metrics["rs/num_samples"] == 12
    assert metrics["train/examples"] == len(solved) + len(rescued)


def test_a_hint_that_names_no_column_is_refused(tiny_model, tmp_path, capsys):
    argv = recipe_args(tiny_model, tmp_path / "o", rationalize=True, rationalization_hint="(the answer is {solution})")
    assert main(argv) == 2
    assert "`rationalization_hint`" in capsys.readouterr().err
