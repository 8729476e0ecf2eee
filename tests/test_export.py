"""DPO pairs and SFT sets: pairing rules on hand-computed matrices, then trl.DPOTrainer and trl.SFTTrainer training
for a few steps on the exported files with a tiny random Llama."""

import math

import pytest
import torch

from rs_trainer.cli import export_main, main
from rs_trainer.run.io import read_jsonl, write_jsonl
from rs_trainer.tools import export


def samples_of(rewards: dict[str, list], lengths: dict[str, list] | None = None, round_index: int = 0):
    out = []
    for pid, row in rewards.items():
        for j, r in enumerate(row):
            out.append(
                {
                    "round": round_index,
                    "prompt_id": pid,
                    "sample_index": j,
                    "prompt": [{"role": "user", "content": f"Question {pid}?"}],
                    "completion": f"answer {pid} {j}",
                    "reward": r,
                    "completion_tokens": lengths[pid][j] if lengths else 10,
                    "finished": True,
                    "selected": False,
                }
            )
    return out


def pair_keys(pairs):
    return [(p["prompt_id"], p["chosen_sample_index"], p["rejected_sample_index"]) for p in pairs]


# Hand-computed matrix (M=3, N=4):
#        s0   s1   s2   s3
#   a   0.2  1.0  0.9  0.5
#   b   0.5  0.5  0.5  0.5     all tied: no preference, no pair
#   c   0.0  1.0  1.0  0.0     s1/s2 tie at the top (s2 shorter); s0/s3 tie at the bottom (s3 longer)
REWARDS = {"a": [0.2, 1.0, 0.9, 0.5], "b": [0.5] * 4, "c": [0.0, 1.0, 1.0, 0.0]}
LENGTHS = {"a": [10, 10, 10, 10], "b": [10] * 4, "c": [10, 12, 8, 20]}


def test_docstring_examples():
    assert export.ranking_score({"reward": 1.0, "completion_tokens": 20}, 0.01) == pytest.approx(0.8)
    a = samples_of({"a": [0.2, 1.0, 0.9, 0.5]})
    assert pair_keys(export.dpo_pairs(a, "best_vs_each_lower", min_margin=0.3)) == [("a", 1, 3), ("a", 1, 0)]
    a = samples_of({"a": [0.2, 1.0, 0.9, 0.5]}, {"a": [10, 60, 10, 10]})
    assert pair_keys(export.dpo_pairs(a, "best_vs_worst", length_penalty=0.01)) == [("a", 2, 0)]
    two = samples_of({"a": [1.0, 0.0]})
    two[0]["selected"] = True
    assert [(r["prompt_id"], r["sample_index"]) for r in export.sft_rows(two)] == [("a", 0)]
    assert len(export.sft_rows(two, selected_only=False)) == 2


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("best_vs_worst", [("a", 1, 0), ("c", 2, 3)]),
        ("best_vs_each_lower", [("a", 1, 2), ("a", 1, 3), ("a", 1, 0), ("c", 2, 0), ("c", 2, 3)]),
    ],
)
def test_pairing_rules_on_the_hand_computed_matrix(rule, expected):
    pairs = export.dpo_pairs(samples_of(REWARDS, LENGTHS), rule)
    assert pair_keys(pairs) == expected
    for p in pairs:
        assert p["chosen_reward"] > p["rejected_reward"] and p["margin"] > 0 and p["round"] == 0
        assert p["chosen"][0]["role"] == "assistant" and p["prompt"][0]["role"] == "user"
        assert p["chosen"][0]["content"] == f"answer {p['prompt_id']} {p['chosen_sample_index']}"


def test_best_vs_random_is_seeded_and_always_strictly_lower():
    samples = samples_of({f"p{i}": [1.0, 0.0, 0.25, 0.5, 0.75] for i in range(20)})
    picks = export.dpo_pairs(samples, "best_vs_random", seed=3)
    assert picks == export.dpo_pairs(samples, "best_vs_random", seed=3)
    assert {p["chosen_sample_index"] for p in picks} == {0}
    assert {p["rejected_sample_index"] for p in picks} == {1, 2, 3, 4}  # every lower sample is drawn somewhere
    other = export.dpo_pairs(samples, "best_vs_random", seed=4)
    assert pair_keys(other) != pair_keys(picks)
    with_margin = export.dpo_pairs(samples, "best_vs_random", min_margin=0.6, seed=3)
    assert {p["rejected_sample_index"] for p in with_margin} <= {1, 2}


def test_margin_length_penalty_and_edge_shapes():
    # Margin within float error counts (1.0 - 0.9 is 0.0999...).
    assert len(export.dpo_pairs(samples_of({"a": [1.0, 0.9]}), min_margin=0.1)) == 1
    assert export.dpo_pairs(samples_of({"a": [1.0, 0.9]}), min_margin=0.11) == []
    # Length penalty can flip the order: 0.9 - 0.1 * 1 beats 1.0 - 0.1 * 5.
    flipped = export.dpo_pairs(samples_of({"a": [1.0, 0.9]}, {"a": [5, 1]}), length_penalty=0.1)
    assert pair_keys(flipped) == [("a", 1, 0)] and flipped[0]["margin"] == pytest.approx(0.3)
    # N=1, all None, empty input: no pairs. None samples never enter a pair.
    assert export.dpo_pairs(samples_of({"a": [1.0], "b": [0.0]})) == []
    assert export.dpo_pairs(samples_of({"a": [None, None]})) == []
    assert export.dpo_pairs([]) == []
    assert pair_keys(export.dpo_pairs(samples_of({"a": [None, 1.0, 0.0]}))) == [("a", 1, 2)]
    with pytest.raises(ValueError, match="prompt_id 'a', sample 1"):
        export.dpo_pairs(samples_of({"a": [0.0, math.nan]}))
    with pytest.raises(ValueError, match="choose one of"):
        export.dpo_pairs(samples_of({"a": [0.0, 1.0]}), rule="best_vs_median")


def test_pairs_never_cross_rounds_and_record_models():
    pooled = samples_of({"a": [1.0]}, round_index=0) + samples_of({"a": [0.0]}, round_index=1)
    assert export.dpo_pairs(pooled) == []  # the same prompt in two rounds: two groups of one
    mixed = samples_of({"a": [0.3, 0.8]})
    mixed[0]["model"], mixed[1]["model"] = "small", "large"
    (pair,) = export.dpo_pairs(mixed)
    assert (pair["chosen_model"], pair["rejected_model"]) == ("large", "small")


def write_run(tmp_path):
    """A fake run folder: rounds 0 and 1 with scored, selected rows as the trainer writes them."""
    run = tmp_path / "run"
    for r in range(2):
        rows = []
        for i in range(4):
            for j in range(3):
                row = {
                    "round": r,
                    "prompt_id": f"p{i}",
                    "sample_index": j,
                    "prompt": [{"role": "user", "content": f"What is {i} + {i}? Give only the final number."}],
                    "completion": str(2 * i + j),
                    "reward": 1.0 if j == 0 else 0.0,
                    "completion_tokens": 2,
                    "finished": j != 2,
                    "selected": j == 0,
                }
                rows.append(row)
        write_jsonl(run / f"round_{r}" / "generations.jsonl", rows)
    return run


def test_round_selection_and_missing_rounds(tmp_path):
    run = write_run(tmp_path)
    assert export.round_numbers(run) == [0, 1]
    assert {r["round"] for r in export.load_generations(run, 1)} == {1}
    assert len(export.load_generations(run)) == 24
    with pytest.raises(FileNotFoundError, match=r"rounds \[0, 1\]; round\(s\) \[5\]"):
        export.load_generations(run, [0, 5])
    rows = export.export_sft(run, tmp_path / "all.jsonl", rounds=None, selected_only=False, drop_truncated=True)
    assert len(rows) == 16 and all(r["sample_index"] != 2 for r in rows)


def test_cli_writes_files_and_names_missing_rounds(tmp_path, capsys):
    run = write_run(tmp_path)
    assert export_main(["dpo", "--output_dir", str(run), "--out", str(tmp_path / "p.jsonl")]) == 0
    assert len(read_jsonl(tmp_path / "p.jsonl")) == 8  # 4 prompts x 2 rounds, best vs worst
    assert export_main(["sft", "--output_dir", str(run), "--rounds", "3", "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "round(s) [3]" in capsys.readouterr().err


def test_one_entry_point_dispatches_on_its_first_word(tmp_path, capsys):
    """`rs-trainer export ...` reaches the exporter; without a command word the arguments are training's."""
    run = write_run(tmp_path)
    assert main(["export", "sft", "--output_dir", str(run), "--out", str(tmp_path / "s.jsonl")]) == 0
    assert len(read_jsonl(tmp_path / "s.jsonl")) == 8  # the selected rows of both rounds
    assert main(["export", "sft", "--output_dir", str(run), "--rounds", "3", "--out", str(tmp_path / "x")]) == 2
    assert "rs_trainer export: error:" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("rs_trainer: error: `--config`")


def trainer_config(cls, out_dir, **extra):
    return cls(
        output_dir=str(out_dir),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
        **extra,
    )


def train_and_check(trainer, model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "no weight changed"
    return losses


@pytest.mark.slow
def test_dpo_trainer_trains_on_exported_pairs(tiny_model, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    run = write_run(tmp_path)
    rows = export.export_dpo(run, tmp_path / "pairs.jsonl", rule="best_vs_each_lower")
    assert len(rows) == 2 * 4 * 2  # rounds x prompts x lower samples
    data = load_dataset("json", data_files=str(tmp_path / "pairs.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected", "prompt_id", "round", "chosen_sample_index"} <= set(data.column_names)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = trainer_config(DPOConfig, tmp_path / "dpo", max_length=64)
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    losses = train_and_check(trainer, model)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1: -log sigmoid(0)


@pytest.mark.slow
def test_sft_trainer_trains_on_exported_sft_set(tiny_model, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    run = write_run(tmp_path)
    rows = export.export_sft(run, tmp_path / "sft.jsonl", rounds=[0, 1])
    assert [(r["round"], r["prompt_id"], r["sample_index"]) for r in rows][:2] == [(0, "p0", 0), (0, "p1", 0)]
    assert len(rows) == 8 and len(export.export_sft(run, tmp_path / "r1.jsonl", rounds=1)) == 4
    data = load_dataset("json", data_files=str(tmp_path / "sft.jsonl"), split="train")
    assert data[0]["completion"] == [{"role": "assistant", "content": "0"}]
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = trainer_config(SFTConfig, tmp_path / "sft", max_length=64)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    losses = train_and_check(trainer, model)
    assert losses[0] > 5.0  # a random model over a 49k vocabulary: a real, large loss


def test_the_merged_policy_loads_in_plain_transformers_with_its_card(tiny_model, tmp_path, capsys):
    """`rs-trainer export model`: round 1's LoRA adapter merged into the base, one folder that
    `AutoModelForCausalLM` loads without peft, whose logits and greedy answers are the adapter model's; the model card
    holds every round's numbers and the recipe. A round that is not finished is refused by number."""
    import yaml
    from helpers import recipe_args
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, folder = tmp_path / "run", tmp_path / "merged"
    argv = recipe_args(
        tiny_model, run, use_peft=True, num_rounds=2, reward_funcs=["tests.scorers_for_tests.length_reward"]
    )
    assert main([*argv, "--lora_target_modules", "q_proj", "v_proj", "--learning_rate", "0.05"]) == 0
    assert export_main(["model", "--output_dir", str(run), "--out", str(folder)]) == 0
    assert f"wrote the merged policy to {folder}" in capsys.readouterr().out
    assert not (folder / "adapter_config.json").exists() and (folder / "config.json").exists()

    merged = AutoModelForCausalLM.from_pretrained(folder)
    adapter = AutoPeftModelForCausalLM.from_pretrained(run / "round_1" / "checkpoint")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(["What is 3 + 4?", "What is 12 + 9?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        got, want, plain = (m(**ids).logits for m in (merged, adapter, base))
    # float32: the merged weight W + BA against W x + B(A x) differ only in summation order.
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(want, plain, atol=1e-3)  # the adapter trained: merging it changes the model
    greedy = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    assert torch.equal(merged.generate(**ids, **greedy), adapter.generate(**ids, **greedy))

    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "base_model" not in front  # a local path: no hub id
    assert "| base |" in card and "\n| 0 |" in card and "\n| 1 |" in card
    recipe = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert recipe["rs"]["num_rounds"] == 2 and recipe["model"]["lora_target_modules"] == ["q_proj", "v_proj"]

    assert export_main(["model", "--output_dir", str(run), "--out", str(folder), "--round", "2"]) == 2
    assert "`--round` 2 is not a finished round" in capsys.readouterr().err


def test_push_to_hub_writes_the_merged_folder_then_names_a_failed_upload(tiny_model, tmp_path, capsys, monkeypatch):
    """`push_to_hub: true` in the recipe: at the end of the run the last round's policy is merged into
    `output_dir/merged`, which loads with plain transformers; the upload itself cannot happen here (the Hub is
    offline), and that is one line with exit code 1 that names the key and the folder, not a traceback."""
    from helpers import recipe_args
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    argv = recipe_args(tiny_model, run, use_peft=True, reward_funcs=["tests.scorers_for_tests.length_reward"])
    argv += ["--lora_target_modules", "q_proj", "v_proj", "--push_to_hub", "true", "--hub_model_id", "me/tiny-rs"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rs_trainer: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "`push_to_hub`: uploading" in lines[0] and str(run / "merged") in lines[0] and "me/tiny-rs" in lines[0]
    assert AutoModelForCausalLM.from_pretrained(run / "merged").config.num_hidden_layers >= 1
    assert (run / "summary.json").exists() and "# run, round 0" in (run / "merged" / "README.md").read_text()
