"""The round loop on a tiny random Llama: outputs, weights that change (or not), checkpoints, refusals."""

import json
import shutil

import pytest
import torch
import yaml
from helpers import recipe_args
from safetensors.torch import load_file

from rs_trainer.cli import main, parse_args
from rs_trainer.rewards import ScorerError
from rs_trainer.run.io import read_jsonl
from rs_trainer.trainer import RejectionSamplingTrainer


def make_trainer(model_path, output_dir, **overrides):
    args, model_args = parse_args(recipe_args(model_path, output_dir, **overrides))
    trainer = RejectionSamplingTrainer(args, model_args)
    trainer.setup()
    return trainer


def base_weights(model_path) -> dict[str, torch.Tensor]:
    return load_file(model_path / "model.safetensors")


def test_lora_round_changes_only_adapter_weights(tiny_model, tmp_path):
    out = tmp_path / "run"
    trainer = make_trainer(
        tiny_model,
        out,
        use_peft=True,
        lora_target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        reward_funcs=["tests.scorers_for_tests.length_reward"],
        num_rounds=2,
    )
    history = trainer.train()
    assert len(history) == 2 and history[0]["train/steps"] > 0
    params = dict(trainer.model.named_parameters())
    lora_b = [p for n, p in params.items() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero and must have been trained"
    base = base_weights(tiny_model)
    for name, p in params.items():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(p.detach(), base[key]), f"base weight {key} changed under LoRA"

    # Outputs: every (round, prompt_id, sample_index) once; the SFT set loads with datasets.
    for r in range(2):
        rows = read_jsonl(out / f"round_{r}" / "generations.jsonl")
        keys = [(x["round"], x["prompt_id"], x["sample_index"]) for x in rows]
        assert len(keys) == len(set(keys)) == 6 * 2
        assert sum(x["selected"] for x in rows) == 4
        metrics = json.loads((out / f"round_{r}" / "metrics.json").read_text())
        assert metrics["rs/num_selected"] == 4 and metrics["timing/generate"] > 0
        assert (out / f"round_{r}" / "checkpoint" / "adapter_config.json").exists()
    from datasets import load_dataset

    sft = load_dataset("json", data_files=str(out / "round_1" / "sft.jsonl"), split="train")
    assert len(sft) == 4 and sft[0]["completion"][0]["role"] == "assistant"
    assert sft[0]["prompt"][0]["role"] == "user"

    # What a person reads: report.png, the samples table, TensorBoard events, stable metric names.
    assert (out / "report.png").stat().st_size > 10_000
    samples = (out / "round_1" / "samples.md").read_text()
    assert samples.startswith("# Round 1: best and worst samples\n\n## ") and "best (reward " in samples
    # Every evaluation set's greedy answers, one row per prompt in the sets' order, agreeing with the metrics.
    from rs_trainer.run.metrics import eval_key

    sets = trainer.inputs.eval_sets
    assert len(sets) == 4
    base = json.loads((out / "base_eval.json").read_text())
    for path, metrics in ((out / "base_eval.jsonl", base), (out / "round_1" / "eval.jsonl", history[1])):
        rows = read_jsonl(path)
        assert [(x["split"], x["prompt_id"]) for x in rows] == [(s, p["prompt_id"]) for s in sets for p in sets[s]]
        for split in sets:
            passed = [x["passed"] for x in rows if x["split"] == split]
            assert metrics[eval_key(split, "accuracy")] == sum(passed) / len(passed)  # k/n both ways: exact
        assert all(isinstance(x["completion"], str) and x["answer"] for x in rows)
    assert list(out.rglob("events.out.tfevents.*"))
    for name in (
        "rs/reward_mean",
        "rs/reward_max",
        "rs/acceptance_rate",
        "rs/pass@1",
        "rs/pass@n",
        "rs/unique_ratio",
        "rs/completion_len",
        "eval/accuracy",
        "eval/reward",
        "train/loss",
        "train/lr",
        "timing/generate",
        "timing/score",
        "timing/sft",
    ):
        assert name in history[1], name

    # The adapter loads with plain peft, without this package.
    from peft import AutoPeftModelForCausalLM

    loaded = AutoPeftModelForCausalLM.from_pretrained(out / "round_1" / "checkpoint")
    trained = {n: p for n, p in trainer.model.named_parameters() if "lora_B" in n}
    for n, p in loaded.named_parameters():
        if n in trained:
            assert torch.allclose(p, trained[n])


def test_full_finetuning_changes_base_weights_and_checkpoint_loads_in_transformers(tiny_model, tmp_path):
    out = tmp_path / "run"
    trainer = make_trainer(tiny_model, out, use_peft=False, reward_funcs=["tests.scorers_for_tests.length_reward"])
    trainer.train()
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out / "round_0" / "checkpoint")
    base = base_weights(tiny_model)
    changed = [k for k, v in loaded.state_dict().items() if k in base and not torch.equal(v, base[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed
    assert torch.equal(
        loaded.state_dict()["model.layers.0.mlp.up_proj.weight"],
        trainer.model.state_dict()["model.layers.0.mlp.up_proj.weight"],
    )


def test_sft_from_base_restarts_each_round_and_pooling_grows_the_set(tiny_model, tmp_path):
    trainer = make_trainer(
        tiny_model,
        tmp_path / "run",
        use_peft=True,
        lora_target_modules=["q_proj", "k_proj"],
        lora_dropout=0.0,
        sft_from="base",
        pool_previous_rounds=True,
        num_rounds=2,
        reward_funcs=["tests.scorers_for_tests.length_reward"],
    )
    snapshot = {k: v.clone() for k, v in trainer.base_state.items()}
    history = trainer.train()
    assert history[1]["train/examples"] == 8  # 4 selected this round + 4 pooled from round 0
    # Round 1 restarted from the base: the adapter equals one round's training from zero, not two.
    assert all(torch.count_nonzero(snapshot[k]) == 0 for k in snapshot if "lora_B" in k)


def test_output_dir_with_other_config_is_refused_then_overwritten(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    argv = recipe_args(tiny_model, out, reward_funcs=["tests.scorers_for_tests.length_reward"], save_checkpoints=False)
    assert main(argv) == 0
    before = (out / "round_0" / "generations.jsonl").read_text()
    code = main(argv + ["--seed", "7"])
    assert code == 2 and "changed: rs.seed" in capsys.readouterr().err
    assert (out / "round_0" / "generations.jsonl").read_text() == before, "refused run touched old outputs"
    assert main(argv + ["--seed", "7", "--overwrite_output_dir", "true"]) == 0


def test_a_finished_run_grows_by_a_round_with_smaller_batches(tiny_model, tmp_path, capsys):
    """A finished 1-round run, rerun with `num_rounds: 2` and the memory keys changed after an imagined OOM: round 1
    runs from round 0's checkpoint, and every file of round 0 is the same to the byte. A key that changes what is
    computed is still refused by name, and so is an SFT micro-batch that changes the sequences per step."""
    out = tmp_path / "run"
    argv = recipe_args(tiny_model, out, reward_funcs=["tests.scorers_for_tests.length_reward"], use_peft=True)
    argv += ["--lora_target_modules", "q_proj", "v_proj", "--temperature", "1.0", "0.7"]
    with pytest.warns(UserWarning, match=r"\[0.7\] wait for rounds 1..1"):
        assert main(argv) == 0
    round_0 = {p.relative_to(out): p.read_bytes() for p in sorted((out / "round_0").rglob("*")) if p.is_file()}
    assert (out / "round_0" / "checkpoint" / "adapter_model.safetensors").relative_to(out) in round_0

    assert main([*argv, "--num_rounds", "2", "--per_device_train_batch_size", "3"]) == 2
    assert "changed: rs.per_device_train_batch_size)" in capsys.readouterr().err
    assert main([*argv, "--num_rounds", "2", "--learning_rate", "0.02"]) == 2
    assert "changed: rs.learning_rate)" in capsys.readouterr().err

    memory = ["--generation_batch_size", "1", "--generation_token_budget", "64"]
    memory += ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2"]
    assert main([*argv, "--num_rounds", "2", *memory]) == 0
    again = {p.relative_to(out): p.read_bytes() for p in sorted((out / "round_0").rglob("*")) if p.is_file()}
    assert again == round_0
    summary = json.loads((out / "summary.json").read_text())
    assert [m["round"] for m in summary] == [0, 1] and (out / "round_1" / "checkpoint").is_dir()
    assert json.loads((out / "run_config.json").read_text())["rs"]["num_rounds"] == 2
    assert json.loads((out / "round_1" / "metrics.json").read_text())["round"] == 1


def test_nan_reward_stops_the_round_naming_prompt_and_sample(tiny_model, tmp_path):
    trainer = make_trainer(
        tiny_model, tmp_path / "run", reward_funcs=["tests.scorers_for_tests.nan_on_second"], dataset_test_split=None
    )
    with pytest.raises(ScorerError, match=r"nan_on_second.*prompt_id '.*', sample 1"):
        trainer.train()


def test_round_with_nothing_selected_is_skipped_not_crashed(tiny_model, tmp_path):
    trainer = make_trainer(
        tiny_model,
        tmp_path / "run",
        reward_funcs=["tests.scorers_for_tests.no_opinion"],
        selection="best_of_n",
        selection_top_k=None,
        dataset_test_split=None,
    )
    history = trainer.train()
    assert history[0]["rs/num_selected"] == 0 and history[0]["train/steps"] == 0


def test_recipe_filters_run_before_selection(tiny_model, tmp_path):
    # A random tiny model never emits the end token in 4 tokens: every sample is truncated, so nothing is left.
    trainer = make_trainer(
        tiny_model,
        tmp_path / "run",
        reward_funcs=["tests.scorers_for_tests.length_reward"],
        dataset_test_split=None,
        selection="percentile",
        reward_percentile=[50.0],
        drop_truncated=True,
        selection_top_k=None,
    )
    history = trainer.train()
    assert history[0]["rs/filtered_out"] == 12 and history[0]["rs/num_selected"] == 0


def test_reward_model_trains_while_the_verifier_judges(tiny_model, embedded_path, tmp_path):
    from helpers import build_tiny_reward_model

    from rs_trainer.rewards import resolve_scorer

    rm = build_tiny_reward_model(tmp_path / "rm", embedded_path)
    name = f"reward_model:{rm}"
    assert resolve_scorer(name, "cpu") is resolve_scorer(name, "cpu")  # loaded once per (path, device)
    assert resolve_scorer(name, "cpu").device.type == "cpu"
    trainer = make_trainer(
        tiny_model,
        tmp_path / "run",
        reward_funcs=[name],
        eval_reward_funcs=["numeric_answer"],
        reward_model_device="cpu",
        selection="best_of_n",
        selection_top_k=None,
    )
    history = trainer.train()
    rows = read_jsonl(tmp_path / "run" / "round_0" / "generations.jsonl")
    # The reward model's scores select; the verifier's 0/1 verdicts are kept beside them and drive pass@k.
    assert any(0 < abs(r["reward"]) and r["reward"] not in (0.0, 1.0) for r in rows)
    assert all(r["verified_reward"] in (0.0, 1.0) for r in rows)
    assert history[0]["rs/pass@1"] == sum(r["verified_reward"] for r in rows) / len(rows)
    assert "rs/selected_pass_rate" in history[0] and history[0]["eval/reward"] in (None, *[i / 4 for i in range(5)])
    assert history[0]["eval/accuracy"] == history[0]["eval/reward"]  # the verifier's 0/1 judged evaluation
    # The watch on reward hacking, from the rows on disk: the same function of the same rows, so exact.
    from rs_trainer.run.metrics import watch_metrics

    selected = {(r["prompt_id"], r["sample_index"]) for r in rows if r["selected"]}
    watched = watch_metrics(rows, selected, pass_threshold=1.0)
    assert watched["watch/decidable_share"] is not None
    assert {k: history[0][k] for k in watched} == watched
    assert history[0]["watch/proxy_up_gold_down"] is False  # one round: nothing to compare with
    assert (tmp_path / "run" / "report.png").stat().st_size > 0


def test_selection_gathers_ids_and_rewards_never_the_text_of_every_sample(tiny_model, tmp_path, monkeypatch):
    import rs_trainer.trainer.sampler as trainer_module
    from rs_trainer.phases import selection

    gathered = []
    real = trainer_module.gather_object
    monkeypatch.setattr(trainer_module, "gather_object", lambda obj: gathered.append(obj) or real(obj))
    trainer = make_trainer(tiny_model, tmp_path / "run", reward_funcs=["tests.scorers_for_tests.length_reward"])
    trainer.train()
    rows = [x for obj in gathered for x in obj if isinstance(x, dict)]
    views = [x for x in rows if "completion" not in x]
    texts = [x for x in rows if "completion" in x]
    assert len(views) == 6 * 2 and all(set(x) == set(selection.FIELDS) for x in views)
    assert len(texts) == 4 and all(x["selected"] for x in texts)  # only the selected set travels, for SFT


def test_reward_model_refresh_trains_once_between_rounds_and_a_resumed_run_reads_it_back(
    tiny_model, embedded_path, tmp_path
):
    """`reward_model_refresh`: before round 1 a reward model trains on round 0's samples ranked by the verifier and
    scores round 1 (its rows' rewards are that model's scores); a run resumed after it was trained loads it, and
    trains nothing."""
    import yaml
    from helpers import build_tiny_reward_model

    from rs_trainer.rewards.reward_model import RewardModelScorer

    rm = build_tiny_reward_model(tmp_path / "rm", embedded_path)
    refresh = tmp_path / "refresh.yaml"
    refresh.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(rm),
                "pair_rule": "best_vs_each_lower",
                "eval_fraction": 0.0,
                "num_train_epochs": 1,
                "learning_rate": 1e-3,
                "per_device_train_batch_size": 4,
                "gradient_checkpointing": False,
                "save_strategy": "no",
                "report_to": "none",
                "bf16": False,
            }
        )
    )
    settings = {
        "reward_funcs": [f"reward_model:{rm}"],
        # The "verifier" whose ranks label the pairs: the length, which differs between a tiny model's samples.
        "eval_reward_funcs": ["tests.scorers_for_tests.length_reward"],
        "reward_model_device": "cpu",
        "selection": "best_of_n",
        "selection_top_k": None,
        "num_rounds": 2,
        "reward_model_refresh": str(refresh),
        "reward_model_refresh_pairs": 3,
    }
    out = tmp_path / "run"
    history = make_trainer(tiny_model, out, **settings).train()
    folder = out / "round_0" / "reward_model"
    metrics = json.loads((folder / "reward_model_metrics.json").read_text())
    # `rs-trainer reward-model` ran once, in a child process, on round 0's pairs ranked by the verifier's reward:
    # 3 of them (the budget), the longer completion chosen.
    assert "reward model: 3 train / 0 held-out pairs" in (out / "round_0" / "reward_model.log").read_text()
    assert not (out / "round_1" / "reward_model").exists()  # no refresh after the last round
    assert metrics["num_pairs"] == 3, metrics
    pairs = read_jsonl(folder / "pairs_train.jsonl")
    assert all(len(p["chosen"][0]["content"]) > len(p["rejected"][0]["content"]) for p in pairs)
    assert all(p["round"] == 0 for p in pairs)
    assert history[1]["watch/decidable_share"] is not None
    rows = read_jsonl(out / "round_1" / "generations.jsonl")
    scorer = RewardModelScorer(str(folder / "model"), device="cpu")
    rescored = scorer([r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert [r["reward"] for r in rows] == pytest.approx(rescored, abs=1e-5)  # batch-invariant scorer, float32 sums
    first = RewardModelScorer(str(rm), device="cpu")([r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert rescored != pytest.approx(first, abs=1e-3)  # the refreshed model scored round 1, not the recipe's

    # A run killed after the refresh trained: round 1's files gone, the reward model on disk. The resumed run
    # loads it, trains no reward model, and samples and scores round 1 as the uninterrupted run did.
    stamp = {
        p: p.stat().st_mtime_ns for p in [*folder.rglob("*"), out / "round_0" / "reward_model.log"] if p.is_file()
    }
    before = read_jsonl(out / "round_1" / "generations.jsonl")
    shutil.rmtree(out / "round_1")
    (out / "summary.json").unlink()
    make_trainer(tiny_model, out, **settings).train()
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing trained again, nothing rewritten
    after = read_jsonl(out / "round_1" / "generations.jsonl")
    assert [(r["prompt_id"], r["sample_index"], r["completion"]) for r in after] == [
        (r["prompt_id"], r["sample_index"], r["completion"]) for r in before
    ]
    assert [r["reward"] for r in after] == pytest.approx([r["reward"] for r in before], abs=1e-5)


def test_trackers_get_every_sft_step_and_each_round_at_a_step_that_only_grows(tiny_model, tmp_path):
    """TensorBoard's events, read back: SFT's loss and learning rate at every optimizer step of the run, each round's
    metrics at the step its SFT ended on, the base model's at 0: one step axis that never goes back (wandb drops a
    step that does), resumed runs included. The model and LoRA keys are in the run's tracker config."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    argv = recipe_args(tiny_model, out, reward_funcs=["tests.scorers_for_tests.length_reward"], use_peft=True)
    argv += ["--lora_target_modules", "q_proj", "v_proj", "--report_to", "tensorboard", "--run_name", "my-run"]
    assert main(argv) == 0
    assert main([*argv, "--num_rounds", "2"]) == 0  # resumed for a second round: the count goes on
    events = {}
    for path in sorted(out.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    summary = json.loads((out / "summary.json").read_text())
    steps = [m["train/steps"] for m in summary]
    assert all(s > 0 for s in steps)
    assert [s for s, _ in events["train/step_loss"]] == list(range(1, sum(steps) + 1))
    assert [s for s, _ in events["train/step_lr"]] == list(range(1, sum(steps) + 1))
    assert [s for s, _ in events["eval/accuracy"]] == [0, steps[0], steps[0] + steps[1]]  # base, round 0, round 1
    assert all(value == (0.0 if step <= steps[0] else 1.0) for step, value in events["round"])
    hparams = yaml.safe_load(next(out.rglob("hparams.yml")).read_text())
    assert hparams["model/lora_r"] == 16 and hparams["model/use_peft"] is True and hparams["run_name"] == "my-run"


def test_a_round_whose_verifier_overruns_on_a_sample_finishes_at_the_limit(tiny_model, tmp_path):
    """A ground truth whose check runs past `verifier_timeout` whatever the completion: a 3000-term polynomial, which
    math-verify tries to parse twice and gives up on only at its own 5 s guard each time (11 s measured). The round
    goes on: that prompt's samples score None, are marked `timed_out` and counted in `rs/scorer_timeouts`, and the
    scoring phase takes about the limit."""
    from rs_trainer.run.io import write_jsonl

    slow = "$" + "+".join(f"x^{{{i}}}" for i in range(3000)) + "$"
    train = [{"prompt_id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]
    train.append({"prompt_id": "slow", "prompt": "Expand the sum.", "answer": slow})
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "eval.jsonl", [{"prompt_id": "e0", "prompt": "What is 2 + 2?", "answer": "4"}])
    out = tmp_path / "run"
    argv = recipe_args(tiny_model, out, reward_funcs=["math_answer"], dataset_name=str(tmp_path / "train.jsonl"))
    argv += [
        "--eval_dataset_name",
        str(tmp_path / "eval.jsonl"),
        "--eval_splits",
        "heldout",
        "--verifier_timeout",
        "2",
    ]
    assert main(argv) == 0
    rows = read_jsonl(out / "round_0" / "generations.jsonl")
    overran = [r for r in rows if r["prompt_id"] == "slow"]
    assert len(overran) == 2 and all(r["reward"] is None and r["timed_out"] == ["math_answer"] for r in overran)
    assert all("timed_out" not in r and r["reward"] is not None for r in rows if r["prompt_id"] != "slow")
    metrics = json.loads((out / "round_0" / "metrics.json").read_text())
    assert metrics["rs/scorer_timeouts"] == 2
    assert metrics["timing/score"] < 2 + 20  # two workers, one limit each at once, plus their start under load


def test_wandb_offline_gets_one_growing_step_axis_with_the_samples_table(tiny_model, tmp_path, monkeypatch):
    """wandb in offline mode, its transaction logs read back: the base model's evaluation at step 0, SFT's loss at
    every step, each round's metrics and samples table at the step its SFT ended on, a resumed run going on from
    there; no step ever goes back (wandb drops such a step). The run's name is `run_name`."""
    pytest.importorskip("wandb", reason="wandb is in `[dev]`: `make test` installs it")
    from helpers import wandb_history

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    argv = recipe_args(tiny_model, out, reward_funcs=["tests.scorers_for_tests.length_reward"], use_peft=True)
    argv += ["--lora_target_modules", "q_proj", "v_proj", "--report_to", "wandb", "--run_name", "wb-run"]
    assert main(argv) == 0
    assert main([*argv, "--num_rounds", "2"]) == 0
    runs = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    assert len(runs) == 2
    steps = [m["train/steps"] for m in json.loads((out / "summary.json").read_text())]
    (name, first), (_, second) = (wandb_history(run) for run in runs)
    assert name == "wb-run"
    logged = first + second
    assert [s for s, _ in logged] == sorted(s for s, _ in logged)  # never back
    at = {}
    for step, keys in logged:
        at.setdefault(step, set()).update(keys)
    assert "eval/accuracy" in at[0] and "train/step_loss" not in at[0]
    assert all("train/step_loss" in at[s] for s in range(1, sum(steps) + 1))
    for end in (steps[0], steps[0] + steps[1]):  # each round's metrics and table where its SFT ended
        assert {"eval/accuracy", "rs/pass@1", "round", "samples/_type"} <= at[end], sorted(at[end])
    assert max(s for s, _ in first) == steps[0] and min(s for s, _ in second) == steps[0] + 1
