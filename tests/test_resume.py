"""SIGKILL a run in the middle of generation, then in the middle of SFT; each rerun of the same command finishes
the run without losing or doubling a row and without regenerating what was already on disk."""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, recipe_args

from rs_trainer.run.io import read_jsonl, read_jsonl_prefix

pytestmark = pytest.mark.slow


def start(argv, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rs_trainer", *argv]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(proc, condition, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("kill point never reached")


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
        num_train_epochs=40,
        per_device_train_batch_size=8,
        dataset_test_split=None,
        report_to="none",
        reward_funcs=["tests.scorers_for_tests.length_reward"],
    )
    shard = out / "round_0" / "shards" / "generations.rank0.jsonl"

    # 1. Kill while round 0 is generating: some batches are on disk, not all.
    proc = start(argv, tmp_path)
    kill_when(proc, lambda: len(read_jsonl_prefix(shard)) >= 6)
    before = {(r["prompt_id"], r["sample_index"]): r for r in read_jsonl_prefix(shard)}
    assert 6 <= len(before) < 48 and not (out / "round_0" / "generations.jsonl").exists()

    # 2. Rerun; kill it while round 0 trains (its scored rows are on disk, its metrics are not).
    proc = start(argv, tmp_path)
    kill_when(proc, lambda: (out / "round_0" / "generations.jsonl").exists())
    assert not (out / "round_0" / "metrics.json").exists(), "SFT finished before the kill; raise num_train_epochs"
    rows0 = read_jsonl(out / "round_0" / "generations.jsonl")

    # 3. Rerun to the end.
    proc = start(argv, tmp_path)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]

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
