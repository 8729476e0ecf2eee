"""Two CPU processes (torchrun, gloo): sharded generation, global selection, equal steps, one copy of outputs."""

import json
import os

import pytest
from helpers import REPO, TORCHRUN, recipe_args, run_group

from rs_trainer.cli import parse_args
from rs_trainer.phases import selection
from rs_trainer.run.io import read_jsonl
from rs_trainer.run.seeds import round_seed

pytestmark = pytest.mark.slow


def test_two_process_round(tiny_model, tmp_path):
    out = tmp_path / "run"
    # 7 prompts: not divisible by the world size of 2.
    argv = recipe_args(
        tiny_model,
        out,
        task_num_train=7,
        num_generations=3,
        selection_top_k=5,
        num_rounds=2,
        use_peft=True,
        lora_target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        report_to="none",
        reward_funcs=["tests.scorers_for_tests.length_reward"],
    )
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "-m", "rs_trainer", *argv]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = run_group(cmd, timeout=600, cwd=tmp_path.parent, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    args, _ = parse_args(argv)
    for r in range(2):
        rows = read_jsonl(out / f"round_{r}" / "generations.jsonl")
        keys = [(x["round"], x["prompt_id"], x["sample_index"]) for x in rows]
        assert len(keys) == len(set(keys)) == 7 * 3  # every prompt generated exactly once, no duplicate rows
        assert sorted({x["prompt_id"] for x in rows}) == [f"train-{i:05d}" for i in range(7)]
        # Global top-K chosen across ranks equals what one process selects from the same reward matrix.
        expected = set(selection.select(rows, args, seed=round_seed(args.seed, r)))
        assert {(x["prompt_id"], x["sample_index"]) for x in rows if x["selected"]} == expected
        metrics = json.loads((out / f"round_{r}" / "metrics.json").read_text())
        steps = metrics["train/steps_per_rank"]
        assert len(steps) == 2 and steps[0] == steps[1] > 0  # both ranks take the same number of steps
        # Each evaluation set (3 questions: 2 on rank 0, 1 on rank 1) judged whole, on both ranks' completions.
        for split in ("phrasings", "words", "stories"):
            assert metrics[f"eval/{split}/accuracy"] * 3 in (0, 1, 2, 3) and metrics[f"eval/{split}/reward"] > 0
        # Both ranks' completions in eval.jsonl, once each, in the sets' order, as the accuracy counts them.
        evaluated = read_jsonl(out / f"round_{r}" / "eval.jsonl")
        ood = ("phrasings", "words", "stories")
        assert [x["split"] for x in evaluated] == ["heldout"] * 4 + [s for s in ood for _ in range(3)]
        assert len({(x["split"], x["prompt_id"]) for x in evaluated}) == 13
        for split in ood:
            passed = sum(x["passed"] for x in evaluated if x["split"] == split)
            assert passed == round(3 * metrics[f"eval/{split}/accuracy"])
    assert {f"eval/{s}/accuracy" for s in ("phrasings", "words", "stories")} <= set(
        json.loads((out / "base_eval.json").read_text())
    )
    assert len(read_jsonl(out / "round_1" / "sft.jsonl")) == 5
