"""FSDP2 on two CPU processes (torchrun, gloo), through tests/fsdp2_worker.py, which puts Accelerate into FSDP2 mode
on the CPU: generation with unequal work per rank, both engines, LoRA and full weights; whole runs killed and
resumed; SFT and drift equal to one process; the collective timeout; a rank without the shared `output_dir`.

Each of these failed before the phases that sample ran on full weights (`rs_trainer.run.sharding`): a deadlock
(gloo's timeout), a collective mismatch, or "FSDP requires a single root module"."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch
from helpers import COLLECTIVE_TIMEOUT_S, REPO, TORCHRUN, assert_rows_match, failure, run_group, two_rank_run_args

from rs_trainer.run.io import read_jsonl

pytestmark = pytest.mark.slow
WORKER = str(REPO / "tests" / "fsdp2_worker.py")


def torchrun(*args, kill_at: str | None = None, timeout: int = COLLECTIVE_TIMEOUT_S, check: bool = True):
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
        "FSDP2_TEST_TIMEOUT": str(timeout),
    }
    if kill_at:
        env["RS_KILL_AT"] = kill_at
    cmd = [*TORCHRUN, "--nproc_per_node", "2", WORKER, *map(str, args)]
    proc = run_group(cmd, timeout=600, env=env)
    if check:
        assert proc.returncode == 0, failure(proc)
    return proc


@pytest.mark.parametrize("engine,kind", [("rs", "lora"), ("hf", "lora"), ("rs", "full")])
def test_generation_with_unequal_work_per_rank(tiny_model, tmp_path, engine, kind):
    out = tmp_path / "gen.json"
    torchrun("generate", tiny_model, engine, kind, out)
    ranks = [json.loads(out.with_name(f"gen.json.rank{r}").read_text()) for r in (0, 1)]
    for result in ranks:
        # The same completions as an unsharded copy: ids, token ids and text exactly. The `rs` rows' `logprob` and
        # `entropy` are sums over <= 12 steps of one-signed float32 terms (an entropy: over 49152 tokens), which the
        # sharded model's other summation order moves by ~(log2(49152) + 12) * 1.2e-7 ~ 3e-6 of their size (seen:
        # 1.2e-7 on an AVX2-only CPU): within the helper's relative 1e-5, unlike another token's log-probability.
        assert_rows_match(result["sharded"], result["expected"])
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
    torchrun("run", *two_rank_run_args(tiny_model, whole, **options))
    metrics = json.loads((whole / "round_1" / "metrics.json").read_text())
    assert metrics["rs/kl_samples"] == 21 and metrics["rs/kl_ref"] != 0.0  # drift is measured under FSDP2
    assert (whole / "round_1" / "checkpoint" / "adapter_model.safetensors").exists()
    killed = torchrun("run", *two_rank_run_args(tiny_model, cut, **options), kill_at="checkpoint", check=False)
    assert killed.returncode != 0 and not (cut / "round_0" / "checkpoint").exists()
    torchrun("run", *two_rank_run_args(tiny_model, cut, **options))
    # Exact: the rerun trains round 0 again, and round 1 from the adapter it saved (bit for bit), on the same rows
    # in the same order on the same two ranks, so every sum is taken in the same order as the uninterrupted run's.
    assert losses(cut) == losses(whole)
    assert rows(cut, 1) == rows(whole, 1)  # round 1 sampled from the same adapter, loaded back on both ranks


def test_full_fine_tuning_resumed_under_fsdp2(tiny_model, tmp_path):
    from safetensors.torch import load_file

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    torchrun("run", *two_rank_run_args(tiny_model, whole))
    # Killed as round 0's metrics are written: the rerun loads round 0's full checkpoint into the sharded model.
    killed = torchrun("run", *two_rank_run_args(tiny_model, cut), kill_at="metrics.json", check=False)
    assert killed.returncode != 0 and (cut / "round_0" / "checkpoint" / "model.safetensors").exists()
    torchrun("run", *two_rank_run_args(tiny_model, cut))
    # Exact: round 0's loss is read back from its checkpoint, and round 1 trains from those weights (saved bit for
    # bit) with fresh AdamW moments, on the same rows in the same order on the same two ranks.
    assert losses(cut) == losses(whole)
    assert rows(cut, 1) == rows(whole, 1)
    a = load_file(whole / "round_1" / "checkpoint" / "model.safetensors")
    b = load_file(cut / "round_1" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # exact, as the losses


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
    # Not the same order: two ranks' loss and gradient sums are reduced across processes where one process
    # accumulates two micro-batches. Each token's cross-entropy is computed alike, so the losses (~10.8, float32
    # ulp 9.5e-7) differ by a few roundings: 1e-5 is ~10 ulps. AdamW's first steps are ~lr times the gradients'
    # signs, which such roundings do not flip, so the weights stay within 1e-5 too.
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
    # Rank 1's two samples are batched apart from the copy's, so padding and summation order differ. `kl_sum` (~1.8)
    # is a difference of two log-probability sums of ~300 nats (28 tokens, two passes): ~2 ulps (1.9e-6) on each
    # of those 56 terms add up to ~1e-4, whatever the KL (seen: 1.5e-5 between CPU kernels), hence abs=2e-4.
    assert sharded["kl_sum"] == pytest.approx(expected["kl_sum"], abs=2e-4)
    # The entropy sum (~302) adds one-signed terms (28 positions of 49152 tokens): (log2(49152) + 28) * 1.2e-7
    # ~ 5e-6 of its size at most, so rel=1e-5.
    assert sharded["entropy_sum"] == pytest.approx(expected["entropy_sum"], rel=1e-5)


def test_ddp_timeout_reaches_the_process_group(tmp_path):
    """`ddp_timeout: 5`: rank 0 gives up at a barrier that rank 1 reaches 15 s later, and gloo's error names the
    5000 ms it waited, the configured value and not torch's default of 30 minutes. Elapsed time is not compared:
    on a loaded machine it can run past any window. (5 s, not 2: the timeout also bounds the set-up, which two
    other jobs on the 2 cores once stretched past 2 s.)"""
    proc = torchrun("timeout", 5, tmp_path, check=False)
    assert proc.returncode != 0
    gave_up = [line for line in proc.stdout.splitlines() if line.startswith("rank 0 gave up")]
    assert gave_up and "waiting 5000ms" in gave_up[0], proc.stdout[-2000:] + proc.stderr[-2000:]


def test_rank_without_the_shared_output_dir_is_refused(tmp_path):
    proc = torchrun("shared", tmp_path, check=False)
    assert proc.returncode != 0
    assert "`output_dir`" in proc.stderr and "is not shared: rank(s) [1]" in proc.stderr
    assert not (tmp_path / "shared").exists()  # nothing is left behind by a refused run
    shutil.rmtree(tmp_path / "elsewhere", ignore_errors=True)
