"""SIGKILL a run in every phase after generation (scoring; selection and the writing of its files; the
checkpoint save; the report), rerunning the same command after each kill. The run that comes out of the kills
equals a run that was never interrupted: the same rows, the same selection, the same SFT set and metrics. A full
disk during a write is a one-line error that leaves the files already written intact.
(Generation and SFT kills are in test_resume.py.)"""

import json
import os
import resource
import signal
import sys
import time

import pytest
from helpers import REPO, recipe_args, run_group, started

from rs_trainer.run.io import read_jsonl
from rs_trainer.run.resume import TRAIN_METRICS

pytestmark = pytest.mark.slow
KILLER = str(REPO / "tests" / "kill_at.py")


def command(argv):
    return [sys.executable, KILLER, *argv]


def environment(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def run_to_end(argv, cwd, **env):
    proc = run_group(command(argv), timeout=600, cwd=cwd, env=environment(**env))
    assert proc.returncode == 0, proc.stderr[-3000:]


def killed_at(name, argv, cwd):
    """Run until just before the first file or folder called `name` would appear; the run dies by SIGKILL."""
    proc = run_group(command(argv), timeout=600, cwd=cwd, env=environment(RS_KILL_AT=name))
    assert proc.returncode == -signal.SIGKILL, f"not killed at {name}: rc {proc.returncode}\n{proc.stderr[-3000:]}"


def outcome(out, rounds=2):
    """What a finished run leaves, without the wall-clock fields that differ between any two runs."""
    result = {}
    for r in range(rounds):
        rdir = out / f"round_{r}"
        result[r, "rows"] = [
            {k: v for k, v in row.items() if k != "generated_at"} for row in read_jsonl(rdir / "generations.jsonl")
        ]
        result[r, "sft"] = read_jsonl(rdir / "sft.jsonl")
        metrics = json.loads((rdir / "metrics.json").read_text())
        result[r, "metrics"] = {
            k: v for k, v in metrics.items() if not k.startswith("timing/") and not k.endswith("tokens_per_s")
        }
        result[r, "adapter"] = (rdir / "checkpoint" / "adapter_model.safetensors").read_bytes()
    return result


def run_args(model, out, **overrides):
    settings = {
        "num_rounds": 2,
        "use_peft": True,
        "lora_target_modules": ["q_proj", "v_proj"],
        "lora_dropout": 0.0,
        "report_to": "none",
        "reward_funcs": ["tests.scorers_for_tests.slow_length_reward"],
        "eval_reward_funcs": ["tests.scorers_for_tests.length_reward"],  # the held-out evaluation is not slowed
    }
    settings.update(overrides)
    if not settings["use_peft"]:
        settings.pop("lora_target_modules")
        settings.pop("lora_dropout")
    return recipe_args(model, out, **settings)


def test_kill_in_every_phase_then_resume_equals_an_uninterrupted_run(tiny_model, tmp_path):
    baseline = tmp_path / "baseline"
    run_to_end(run_args(tiny_model, baseline), tmp_path)
    expected = outcome(baseline)

    out = tmp_path / "killed"
    argv = run_args(tiny_model, out)
    r0 = out / "round_0"
    shard = r0 / "shards" / "generations.rank0.jsonl"

    # 1. Scoring: the scorer is sleeping when the kill comes; every row is generated, none scored.
    mark = tmp_path / "scoring"
    # The run is SIGKILLed as the block is left; the scorer sleeps 60 s after the mark, ample time for that.
    with started(command(argv), cwd=tmp_path, env=environment(RS_TEST_SLOW_SCORER=str(mark))) as proc:
        deadline = time.monotonic() + 300
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mark.exists(), "the run never reached scoring"
    generated = {(x["prompt_id"], x["sample_index"]): x["generated_at"] for x in read_jsonl(shard)}
    assert len(generated) == 6 * 2 and not (r0 / "generations.jsonl").exists()

    # 2. Selection's files: sft.jsonl is written, generations.jsonl (the phase's mark) is not.
    killed_at("generations.jsonl", argv, tmp_path)
    assert (r0 / "sft.jsonl").exists() and not (r0 / "generations.jsonl").exists()
    assert {(x["prompt_id"], x["sample_index"]): x["generated_at"] for x in read_jsonl(shard)} == generated

    # 3. The checkpoint save: the new folder is complete but not yet in place.
    killed_at("checkpoint", argv, tmp_path)
    rows = read_jsonl(r0 / "generations.jsonl")
    assert {(x["prompt_id"], x["sample_index"]): x["generated_at"] for x in rows} == generated  # not re-sampled
    assert not (r0 / "checkpoint").exists() and not (r0 / "shards").exists()

    # 4. The report: the checkpoint is saved, report.png and metrics.json are not.
    killed_at("report.png", argv, tmp_path)
    saved = (r0 / "checkpoint" / "adapter_model.safetensors").stat().st_mtime_ns
    assert (r0 / "checkpoint" / TRAIN_METRICS).exists() and not (r0 / "metrics.json").exists()

    # 5. metrics.json, the round's last file.
    killed_at("metrics.json", argv, tmp_path)
    assert (out / "report.png").exists() and not (r0 / "metrics.json").exists()

    # 6. The rerun finishes; round 0 was trained once (kill 4 and 5 did not re-train it).
    run_to_end(argv, tmp_path)
    assert (r0 / "checkpoint" / "adapter_model.safetensors").stat().st_mtime_ns == saved
    # Exact, floats and adapter bytes included: rows read back are copies, and whatever is computed again runs on
    # one thread (OMP_NUM_THREADS=1) on the same rows, seeds and weights as the uninterrupted run, in the same order.
    assert outcome(out) == expected
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob(".*.old"))


@pytest.mark.parametrize("phase", ["checkpoint", "report.png"])
def test_full_disk_is_one_line_and_leaves_earlier_files_intact(tiny_model, tmp_path, phase):
    """RLIMIT_FSIZE makes every write past the limit fail as a full disk does (EFBIG). The first phase whose
    output is larger than the limit fails; what was written before stays whole, and a rerun finishes."""
    out = tmp_path / "run"
    if phase == "checkpoint":  # full weights and the tokenizer: megabytes; everything before is smaller
        argv, limit = run_args(tiny_model, out, use_peft=False, num_rounds=1), 1_000_000
    else:  # report.png is ~60 kB; without checkpoints every earlier file is smaller than 20 kB
        argv, limit = run_args(tiny_model, out, save_checkpoints=False, num_rounds=1), 20_000

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = run_group(command(argv), timeout=600, cwd=tmp_path, env=environment(), preexec_fn=small_disk)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rs_trainer: error: ") and "rerun" in last, last
    rows = read_jsonl(out / "round_0" / "generations.jsonl")
    assert len(rows) == 12 and read_jsonl(out / "round_0" / "sft.jsonl")
    assert not (out / "round_0" / "metrics.json").exists()
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob(".*.tmp.png"))
    assert not (out / "round_0" / "checkpoint").exists() and not (out / "report.png").exists()
    run_to_end(argv, tmp_path)
    assert read_jsonl(out / "round_0" / "generations.jsonl") == rows  # exact: read back, not sampled again
    assert (out / "round_0" / "metrics.json").exists()
