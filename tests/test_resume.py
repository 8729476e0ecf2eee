"""SIGKILL a run in the middle of generation, then in the middle of SFT; each rerun of the same command finishes
the run without losing or doubling a row and without regenerating what was already on disk."""

import os
import signal
import sys

import pytest
from helpers import REPO, recipe_args, run_group

from rs_trainer.run.io import read_jsonl, read_jsonl_prefix

pytestmark = pytest.mark.slow
KILLER = str(REPO / "tests" / "kill_at.py")


def run(argv, cwd, **kill_point):
    """The run in a new process on one thread (other tests share the cores); killed at `kill_point`, if given, from
    inside (tests/kill_at.py), so the kill lands in the same place however fast the run goes."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **kill_point}
    return run_group([sys.executable, KILLER, *argv], timeout=600, cwd=cwd, env=env)


def killed(argv, cwd, **kill_point) -> None:
    proc = run(argv, cwd, **kill_point)
    assert proc.returncode == -signal.SIGKILL, (
        f"not killed at {kill_point}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
    )


def test_sigkill_during_generation_then_during_sft(tiny_model, tmp_path):
    out = tmp_path / "run"
    argv = recipe_args(
        tiny_model,
        out,
        task_num_train=24,
        num_generations=2,
        max_completion_length=24,
        generation_batch_size=2,
        num_rounds=2,
        selection="best_of_n",
        selection_top_k=None,
        num_train_epochs=4,  # 12 optimizer steps in round 0
        per_device_train_batch_size=8,
        dataset_test_split=None,
        report_to="none",
        reward_funcs=["tests.scorers_for_tests.length_reward"],
    )
    shard = out / "round_0" / "shards" / "generations.rank0.jsonl"

    # 1. Kill while round 0 is generating: 3 batches of 2 rows are on disk, not all 24.
    killed(argv, tmp_path, RS_KILL_AFTER_APPENDS="3")
    before = {(r["prompt_id"], r["sample_index"]): r for r in read_jsonl_prefix(shard)}
    assert 6 <= len(before) < 48 and not (out / "round_0" / "generations.jsonl").exists()

    # 2. Rerun; kill it while round 0 trains, after 5 of its 12 steps (its scored rows are on disk, its metrics not).
    killed(argv, tmp_path, RS_KILL_AFTER_STEPS="5")
    assert (out / "round_0" / "generations.jsonl").exists() and not (out / "round_0" / "metrics.json").exists()
    rows0 = read_jsonl(out / "round_0" / "generations.jsonl")

    # 3. Rerun to the end.
    proc = run(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    for r in range(2):
        rows = read_jsonl(out / f"round_{r}" / "generations.jsonl")
        keys = [(x["round"], x["prompt_id"], x["sample_index"]) for x in rows]
        assert len(keys) == len(set(keys)) == 24 * 2, f"round {r}: lost or doubled rows"
        assert (out / f"round_{r}" / "metrics.json").exists()
    final0 = {(x["prompt_id"], x["sample_index"]): x for x in read_jsonl(out / "round_0" / "generations.jsonl")}
    for key, row in before.items():  # generated before the first kill: reused, not regenerated
        assert final0[key]["generated_at"] == row["generated_at"]
        assert final0[key]["completion"] == row["completion"]
    assert [x["generated_at"] for x in rows0] == [
        final0[(x["prompt_id"], x["sample_index"])]["generated_at"] for x in rows0
    ]  # the SFT kill did not re-sample round 0
