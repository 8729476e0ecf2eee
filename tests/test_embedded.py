"""One real round of the default recipe on the embedded SmolLM2-135M-Instruct, on a handful of prompts,
through `accelerate launch` exactly as a user runs it."""

import json
import os
import sys

import pytest
from helpers import REPO, run_group

from rs_trainer.run.io import read_jsonl

pytestmark = pytest.mark.slow


def test_default_recipe_one_round_on_embedded_model(tmp_path, embedded_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate_configs/cpu.yaml"),
        "-m",
        "rs_trainer",
        "--config",
        str(REPO / "recipes/smollm2/arithmetic_lora.yaml"),
        "--output_dir",
        str(out),
        "--num_rounds",
        "1",
        "--prompts_per_round",
        "8",
        "--num_generations",
        "4",
        "--max_completion_length",
        "16",
        "--task_num_eval",
        "8",
        "--task_num_eval_ood",
        "4",
        "--eval_max_new_tokens",
        "16",
    ]
    # One process: both cores, unless pytest runs a worker per core (conftest sets OMP_NUM_THREADS=1 there).
    env = {"OMP_NUM_THREADS": "2", **os.environ, "HF_HUB_OFFLINE": "1"}
    proc = run_group(cmd, timeout=900, cwd=tmp_path, env=env)  # `accelerate launch` and the run it starts
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval_acc_after" in proc.stdout + proc.stderr  # the end-of-run table
    rows = read_jsonl(out / "round_0" / "generations.jsonl")
    assert len(rows) == 8 * 4
    assert len({(r["round"], r["prompt_id"], r["sample_index"]) for r in rows}) == 32
    assert all(r["reward"] in (0.0, 1.0) for r in rows)
    selected = [r for r in rows if r["selected"]]
    assert all(r["reward"] == 1.0 for r in selected)  # min_reward: 1.0 in the recipe
    assert all(r["finished"] for r in selected)  # drop_truncated: true in the recipe
    assert len({r["prompt_id"] for r in selected}) == len(selected)  # best-of-N: at most one per prompt
    metrics = json.loads((out / "round_0" / "metrics.json").read_text())
    for key in (
        "rs/reward_mean",
        "rs/acceptance_rate",
        "rs/pass@1",
        "rs/pass@n",
        "eval/accuracy",
        "eval/accuracy_before",
        "eval/phrasings/accuracy",  # the default `eval_splits`: held-out, then the addition forms
        "eval/words/accuracy",
        "eval/stories/accuracy",
        "timing/generate",
        "timing/score",
        "timing/sft",
        "timing/eval",
        "timing/save",
    ):
        assert key in metrics
    assert metrics["rs/pass@n"] >= metrics["rs/pass@1"]
    assert (out / "round_0" / "checkpoint" / "adapter_model.safetensors").exists()
