"""DeepSpeed ZeRO-3 (`rs_trainer.run.deepspeed`): the configuration written before `prepare`, and the no-op paths,
without DeepSpeed; then, where DeepSpeed is installed, two CPU processes under ZeRO-3 (torchrun, gloo) through
tests/zero3_worker.py.

Each two-process case failed before its function existed: `prepare` raised Accelerate's "requires you to pass at
least one of training or evaluation dataloaders" ValueError; models loaded after `Accelerator()` were shape-[0]
partitions; generation with unequal forwards per rank timed out in gloo; and a checkpoint or base weights copied
into the partitions were undone by the next optimizer step (its fp32 master copy)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from types import SimpleNamespace

import pytest
import torch
from accelerate import DeepSpeedPlugin
from accelerate.utils import DistributedType
from helpers import COLLECTIVE_TIMEOUT_S, REPO, TORCHRUN, failure, run_group, two_rank_run_args

from rs_trainer.run.deepspeed import (
    configure_batch_sizes,
    configure_gradient_clipping,
    gathered_for_generation,
    gathered_for_loading,
    is_zero3,
    load_full_state,
    outside_zero3_init,
    restore_trainable_gathered,
    trainable_state_gathered,
)

WORKER = str(REPO / "tests" / "zero3_worker.py")
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is not installed (optional: `pip install deepspeed`; it runs ZeRO-3 on this CPU with gloo)",
)


def ds_accelerator(num_processes: int = 4, **config):
    """What `configure_*` reads of an Accelerator under DeepSpeed, around a real `DeepSpeedPlugin` (which needs no
    DeepSpeed installed): `zero3.yaml`'s settings, or a DeepSpeed json given as `config`."""
    plugin = DeepSpeedPlugin(hf_ds_config=config) if config else DeepSpeedPlugin(zero_stage=3, zero3_init_flag=True)
    state = SimpleNamespace(deepspeed_plugin=plugin)
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=state, num_processes=num_processes)


def test_configure_replaces_auto_before_prepare():
    acc = ds_accelerator()
    plugin = acc.state.deepspeed_plugin
    assert plugin.is_auto("train_micro_batch_size_per_gpu")  # what makes `prepare` raise without a DataLoader
    configure_batch_sizes(acc, per_device_train_batch_size=3, gradient_accumulation_steps=2)
    configure_gradient_clipping(acc, max_grad_norm=0.25)
    assert not plugin.is_auto("train_micro_batch_size_per_gpu")
    # What Accelerate 1.15's `_prepare_deepspeed` then does with its defaults: fill only what is still `auto`.
    plugin.deepspeed_config_process(must_match=False, gradient_clipping=1.0, train_micro_batch_size_per_gpu=3)
    config = plugin.deepspeed_config
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 3 * 2 * 4
    assert config["gradient_clipping"] == 0.25  # not Accelerate's 1.0


def test_clipping_off_and_missing_keys():
    acc = ds_accelerator(zero_optimization={"stage": 3})  # a json without batch or clipping keys
    configure_batch_sizes(acc, 2, 1)
    configure_gradient_clipping(acc, 0)
    config = acc.state.deepspeed_plugin.deepspeed_config
    assert (config["train_micro_batch_size_per_gpu"], config["train_batch_size"]) == (2, 8)
    assert config["gradient_clipping"] == 0.0  # DeepSpeed clips only above 0; its default would be 1.0


def test_explicit_conflicting_values_are_refused_by_name():
    acc = ds_accelerator(zero_optimization={"stage": 3}, train_micro_batch_size_per_gpu=4, gradient_clipping=1.0)
    configure_batch_sizes(acc, 4, 1)  # equal values pass
    with pytest.raises(ValueError, match=r"`train_micro_batch_size_per_gpu: 4`.*`per_device_train_batch_size`"):
        configure_batch_sizes(acc, 2, 1)
    with pytest.raises(ValueError, match=r"`gradient_clipping: 1.0`.*`max_grad_norm`.*auto"):
        configure_gradient_clipping(acc, 0.5)


def test_configure_is_a_no_op_without_deepspeed():
    acc = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)  # no `state`: reading it would fail
    configure_batch_sizes(acc, 2, 1)
    configure_gradient_clipping(acc, 1.0)
    assert not is_zero3(acc)
    assert is_zero3(ds_accelerator())
    assert not is_zero3(ds_accelerator(zero_optimization={"stage": 2}))


def test_plain_model_paths_copy_and_restore():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    assert not is_zero3(model)
    with gathered_for_generation(model) as full, gathered_for_loading(model) as loading:
        assert full is model and loading is model
    base = trainable_state_gathered(model)
    assert sorted(base) == ["0.bias", "1.bias", "1.weight"]  # the trainable parameters only
    assert trainable_state_gathered(model, keep=False) is None
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.allclose(model[1].weight - base["1.weight"], torch.ones(2, 3))  # a copy, not the live tensor
    restore_trainable_gathered(model, base)
    assert torch.equal(model[1].weight, base["1.weight"]) and torch.equal(model[0].bias, base["0.bias"])
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items() if k != "1.bias"}
    state["extra"] = torch.zeros(1)
    missing, unexpected = load_full_state(model, state)
    assert (missing, unexpected) == (["1.bias"], ["extra"])
    assert model[0].weight.abs().sum() == 0


def test_outside_zero3_init_without_zero3_changes_nothing():
    from transformers.integrations import is_deepspeed_zero3_enabled

    with outside_zero3_init():
        assert not is_deepspeed_zero3_enabled()
    assert not is_deepspeed_zero3_enabled()


@needs_deepspeed
def test_outside_zero3_init_turns_zero3_init_off_and_back():
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    try:
        assert is_deepspeed_zero3_enabled()
        with outside_zero3_init():
            assert not is_deepspeed_zero3_enabled()  # from_pretrained takes no zero.Init here
        assert is_deepspeed_zero3_enabled()
        with pytest.raises(KeyError), outside_zero3_init():
            raise KeyError("restored on errors too")
        assert is_deepspeed_zero3_enabled()
    finally:
        unset_hf_deepspeed_config()
        del config


def torchrun(*args, timeout: int = COLLECTIVE_TIMEOUT_S) -> list[dict]:
    """Run a tests/zero3_worker.py case on two processes; each rank's JSON result (the last argument is its path)."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}  # DeepSpeed, not Accelerate's MULTI_CPU
    env.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}",
        ZERO3_TEST_TIMEOUT=str(timeout),
    )
    cmd = [*TORCHRUN, "--nproc_per_node", "2", WORKER, *map(str, args)]
    proc = run_group(cmd, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = args[-1]
    return [json.loads(out.with_name(f"{out.name}.rank{r}").read_text()) for r in (0, 1)]


@needs_deepspeed
@pytest.mark.slow
def test_prepare_without_dataloader_clips_and_loads_extra_models_whole(tiny_model, tmp_path):
    for result in torchrun("prepare", tiny_model, tmp_path / "prepare.json"):
        assert result["loaded_shape"] == [0]  # the policy is partitioned at load (`zero3_init_flag`)
        assert result["config"] == {
            "train_micro_batch_size_per_gpu": 2,
            "train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 1e-3,
        }
        # SGD at learning rate 1: the step's size is the clipped gradient's norm, `max_grad_norm`, not 1.0.
        assert result["grad_norm"] > 0.1
        assert 0.9e-3 < result["change"] < 1.01e-3
        assert result["zero3"] == [True, True, True, False]
        assert result["partitioned_shape"] == [0]  # a load outside the block is still partitioned
        assert result["extra_shape"] == [49152, 32] and result["extra_finite"]


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["rs", "hf"])
def test_gathered_generation_with_unequal_forwards(tiny_model, tmp_path, engine):
    ranks = torchrun("generate", tiny_model, engine, tmp_path / "gen.json")
    for result in ranks:
        # The same completions as an unsharded copy, exactly: a seeded draw picks another token only if it falls
        # within the logits' last-bit difference (below) of a cumulative-probability boundary: odds of ~1e-6 a step.
        assert result["first"] == result["expected_first"]
        assert result["second"] == result["expected_second"]  # and after a training step
        # The gathered weights equal the copy's but need not be multiplied in the same blocking: each logit (|z| <
        # 0.71) comes out of sums of 32 to 64 float32 terms of order 1 in two layers: ~64 * 1.2e-7 ~ 8e-6 apart.
        assert max(result["logits_diff"]) < 1e-5  # a training step moves them by > 1e-3 (here ~0.2)
        assert result["trained_change"] > 1e-3  # the step changed the model, so the second check means something
        before, inside, after = result["hooks"]
        assert inside < before and after == before  # DeepSpeed's hooks off for the phase, then all back
        assert result["shape_after"] == [0]  # partitioned again
        assert result["losses"][1] < result["losses"][0]  # training goes on after the phases
    assert len(ranks[0]["first"]) == 3 and len(ranks[1]["first"]) == 1


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_loaded_weights_survive_the_next_step(tiny_model, tmp_path, kind):
    for result in torchrun("load", tiny_model, kind, tmp_path / "load.json"):
        assert result["count"] == (20 if kind == "full" else 8)
        # lm_head is tied to the embeddings; peft's own load reports the frozen base weights, left out here.
        assert result["missing"] == (["lm_head.weight"] if kind == "full" else []) and result["unexpected"] == []
        assert result["loaded_diff"] == 0.0  # exact: a copy of the same float32 values
        assert result["stepped_diff"] == 0.0  # exact at learning rate 0: the optimizer's master copy holds them too
        assert result["shape_after"] == [0]


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_sft_from_base_restores_full_weights(tiny_model, tmp_path, kind):
    for result in torchrun("restore", tiny_model, kind, tmp_path / "restore.json"):
        assert result["count"] == (20 if kind == "full" else 8) and result["shapes_full"]
        assert result["trained_diff"] > 1e-3  # training moved the weights
        assert result["restored_diff"] == 0.0  # exact: a copy of the same float32 values
        assert result["stepped_diff"] == 0.0  # exact at learning rate 0: the next step does not put the trained back


def run_trainer(argv: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    """The whole trainer on the ZeRO-3 accelerator, on two processes (tests/zero3_worker.py `run`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "RS_KILL_AT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
    env["ZERO3_TEST_TIMEOUT"] = str(COLLECTIVE_TIMEOUT_S)
    if kill_at:
        env["RS_KILL_AT"] = kill_at
    cmd = [*TORCHRUN, "--nproc_per_node", "2", WORKER, "run", *argv]
    return run_group(cmd, timeout=600, env=env)


def round_record(out) -> tuple[list, list]:
    from rs_trainer.run.io import read_jsonl

    losses = [json.loads((out / f"round_{r}" / "metrics.json").read_text())["train/loss"] for r in range(2)]
    rows = [
        (x["prompt_id"], x["sample_index"], x["completion"]) for x in read_jsonl(out / "round_1/generations.jsonl")
    ]
    return losses, rows


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize(
    "options,kill_at",
    [
        # LoRA with the temperature probe, rationalization and drift, killed as round 0's checkpoint is swapped in.
        (
            {
                "use_peft": True,
                "lora_target_modules": ["q_proj", "v_proj"],
                "lora_dropout": 0.0,
                "temperature": "auto",
                "temperature_probe_prompts": 3,
                "rationalize": True,
            },
            "checkpoint",
        ),
        # ReST-EM with full fine-tuning (`sft_from: base`), killed as round 0's metrics are written.
        ({"sft_from": "base", "pool_previous_rounds": True}, "metrics.json"),
    ],
    ids=["lora", "full-sft-from-base"],
)
def test_whole_run_under_zero3_killed_and_resumed(tiny_model, tmp_path, options, kill_at):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = run_trainer(two_rank_run_args(tiny_model, whole, **options))
    assert done.returncode == 0, failure(done)
    killed = run_trainer(two_rank_run_args(tiny_model, cut, **options), kill_at=kill_at)
    assert killed.returncode != 0
    resumed = run_trainer(two_rank_run_args(tiny_model, cut, **options))
    assert resumed.returncode == 0, failure(resumed)
    (losses, rows), (cut_losses, cut_rows) = round_record(whole), round_record(cut)
    # Exact: the rerun trains from the same saved weights (bit for bit) with fresh optimizer state, on the same rows
    # in the same order on the same two ranks, so every sum is taken in the same order as the uninterrupted run's.
    assert losses[0] > 1.0 and cut_losses == losses
    assert cut_rows == rows  # round 1 sampled from the same weights, loaded back into the partitions
    if options.get("use_peft"):
        metrics = json.loads((whole / "round_1" / "metrics.json").read_text())
        assert metrics["rs/kl_samples"] == 21 and metrics["rs/kl_ref"] != 0.0  # drift is measured under ZeRO-3
