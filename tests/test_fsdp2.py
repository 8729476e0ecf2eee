"""FSDP2 on two CPU processes (torchrun, gloo), through tests/fsdp2_worker.py, which puts Accelerate into FSDP2 mode
on the CPU: generation with unequal work per rank, both engines, LoRA and full weights; whole runs killed and
resumed; SFT and drift equal to one process; the collective timeout; a rank without the shared `output_dir`.

Each of these failed before the phases that sample ran on full weights (`rs_trainer.run.sharding`): a deadlock
(gloo's timeout), a collective mismatch, or "FSDP requires a single root module"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, failure, two_rank_run_args

from rs_trainer.run.io import read_jsonl

pytestmark = pytest.mark.slow
WORKER = str(REPO / "tests" / "fsdp2_worker.py")


def torchrun(*args, kill_at: str | None = None, timeout: int = 20, check: bool = True):
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
        "FSDP2_TEST_TIMEOUT": str(timeout),
    }
    if kill_at:
        env["RS_KILL_AT"] = kill_at
    from rs_trainer.generators.server import free_port

    port = ["--master_port", str(free_port())]  # another suite's torchrun may still hold the default port
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *port, WORKER, *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, failure(proc)
    return proc


@pytest.mark.parametrize("engine,kind", [("rs", "lora"), ("hf", "lora"), ("rs", "full")])
def test_generation_with_unequal_work_per_rank(tiny_model, tmp_path, engine, kind):
    out = tmp_path / "gen.json"
    torchrun("generate", tiny_model, engine, kind, out)
    ranks = [json.loads(out.with_name(f"gen.json.rank{r}").read_text()) for r in (0, 1)]
    for result in ranks:
        assert result["sharded"] == result["expected"]  # the same completions as an unsharded copy
        assert result["again"] > 0 and result["loss"] > 1.0  # training and a second phase after it
    rank0 = [row["completion_tokens"] for row in ranks[0]["sharded"]]
    assert len(rank0) == 6 and len(ranks[1]["sharded"]) == 2  # three batches against one
    assert min(rank0) < max(rank0)  # rows ended at different steps


LORA = {"use_peft": True, "lora_target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}


def losses(out):
    return [json.loads((out / f"round_{r}" / "metrics.json").read_text())["train/loss"] for r in range(2)]


def rows(out, r):
    return [
        (x["prompt_id"], x["sample_index"], x["completion"]) for x in read_jsonl(out / f"round_{r}/generations.jsonl")
    ]


def test_lora_run_with_probe_and_rationalization_killed_and_resumed(tiny_model, tmp_path):
    options = {**LORA, "temperature": "auto", "temperature_probe_prompts": 3, "rationalize": True}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    torchrun("run", *two_rank_run_args(tiny_model, whole, **options), timeout=60)
    metrics = json.loads((whole / "round_1" / "metrics.json").read_text())
    assert metrics["rs/kl_samples"] == 21 and metrics["rs/kl_ref"] != 0.0  # drift is measured under FSDP2
    assert (whole / "round_1" / "checkpoint" / "adapter_model.safetensors").exists()
    killed = torchrun(
        "run", *two_rank_run_args(tiny_model, cut, **options), kill_at="checkpoint", timeout=60, check=False
    )
    assert killed.returncode != 0 and not (cut / "round_0" / "checkpoint").exists()
    torchrun("run", *two_rank_run_args(tiny_model, cut, **options), timeout=60)
    assert losses(cut) == pytest.approx(losses(whole), abs=1e-6)
    assert rows(cut, 1) == rows(whole, 1)  # round 1 sampled from the same adapter, loaded back on both ranks


def test_full_fine_tuning_resumed_under_fsdp2(tiny_model, tmp_path):
    from safetensors.torch import load_file

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    torchrun("run", *two_rank_run_args(tiny_model, whole), timeout=60)
    # Killed as round 0's metrics are written: the rerun loads round 0's full checkpoint into the sharded model.
    killed = torchrun("run", *two_rank_run_args(tiny_model, cut), kill_at="metrics.json", timeout=60, check=False)
    assert killed.returncode != 0 and (cut / "round_0" / "checkpoint" / "model.safetensors").exists()
    torchrun("run", *two_rank_run_args(tiny_model, cut), timeout=60)
    assert losses(cut) == pytest.approx(losses(whole), abs=1e-6)
    assert rows(cut, 1) == rows(whole, 1)
    a = load_file(whole / "round_1" / "checkpoint" / "model.safetensors")
    b = load_file(cut / "round_1" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_sft_under_fsdp2_equals_one_process(tiny_model, tmp_path, kind):
    """Batch 2 on each of 2 ranks against batch 2 with 2 accumulation steps in one process, same 9 examples."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_sft import make_examples
    from transformers import get_scheduler
    from trl import get_peft_config

    from rs_trainer.phases.sft import plan_steps, train_steps
    from rs_trainer.run.models import load_policy, load_tokenizer

    out = tmp_path / "fsdp2.pt"
    torchrun("sft", tiny_model, kind, out)
    sharded = torch.load(out)

    sys.path.insert(0, str(REPO / "tests"))
    from accelerate import Accelerator
    from fsdp2_worker import model_args_for

    model_args = model_args_for(str(tiny_model), kind == "lora")
    torch.manual_seed(0)
    model, _ = load_policy(model_args, get_peft_config(model_args))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    tokenizer = load_tokenizer(str(tiny_model))
    steps = plan_steps(make_examples(tokenizer, 9), 1, 2, 2, 0, 1, seed=0)
    acc = Accelerator(cpu=True)
    expected, _ = train_steps(
        acc, model, optimizer, get_scheduler("constant", optimizer), steps, tokenizer.pad_token_id
    )
    assert len(expected) == 3 and sharded["losses"] == pytest.approx(expected, abs=1e-5)
    params = dict(model.named_parameters())
    assert sharded["state"].keys() == {n for n, p in params.items() if p.requires_grad}
    diff = max((sharded["state"][n] - params[n].detach()).abs().max().item() for n in sharded["state"])
    assert diff < 1e-5


def test_drift_under_fsdp2_equals_one_process(tiny_model, tmp_path):
    out = tmp_path / "drift.json"
    torchrun("drift", tiny_model, out)
    found = json.loads(out.read_text())
    sharded, expected = found["sharded"], found["expected"]
    assert sharded["samples"] == expected["samples"] == 7 and sharded["tokens"] == expected["tokens"]
    assert abs(expected["kl_sum"]) > 1e-3  # the perturbed adapter moved the policy
    assert sharded["kl_sum"] == pytest.approx(expected["kl_sum"], rel=1e-4, abs=1e-5)
    assert sharded["entropy_sum"] == pytest.approx(expected["entropy_sum"], rel=1e-5)


def test_ddp_timeout_reaches_the_process_group(tmp_path):
    start = time.time()
    proc = torchrun("timeout", 2, check=False)
    assert proc.returncode != 0
    assert "rank 0 gave up after 2." in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.time() - start < 60


def test_rank_without_the_shared_output_dir_is_refused(tmp_path):
    proc = torchrun("shared", tmp_path, check=False)
    assert proc.returncode != 0
    assert "`output_dir`" in proc.stderr and "is not shared: rank(s) [1]" in proc.stderr
    assert not (tmp_path / "shared").exists()  # nothing is left behind by a refused run
    shutil.rmtree(tmp_path / "elsewhere", ignore_errors=True)
