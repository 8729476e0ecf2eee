"""Reward-model training (`rs_trainer.tools.reward_training`): pairs from a run's scored generations, split by prompt,
trained with trl.RewardTrainer on a tiny BERT, saved so that `RewardModelScorer` reads it through the same chat
template TRL trained it with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import build_tiny_bert_reward_model, write_jsonl

from rs_trainer.cli import reward_training_main as main
from rs_trainer.rewards.reward_model import RewardModelScorer
from rs_trainer.run.io import read_jsonl
from rs_trainer.tools.reward_training import (
    ENCODER_CHAT_TEMPLATE,
    RewardDataArguments,
    build_pairs,
    prepare_start_model,
    split_by_prompt,
)


def fake_run(folder: Path, num_prompts: int = 12) -> Path:
    """A finished run's round_0/generations.jsonl: per prompt two right answers ("yes ...") and two wrong ones
    ("no ..."), one of them a repeat of another, so pairs and de-duplication both have something to do."""
    rows = []
    for i in range(num_prompts):
        prompt = [{"role": "user", "content": f"Is {i} a number?"}]
        texts = [("yes it is", 1.0), ("no", 0.0), ("yes indeed", 1.0), ("No ", 0.0)]
        for j, (text, reward) in enumerate(texts):
            rows.append(
                {"round": 0, "prompt_id": f"q{i}", "sample_index": j, "prompt": prompt, "completion": text}
                | {"reward": reward, "completion_tokens": len(text.split()), "finished": True, "selected": False}
            )
    (folder / "round_0").mkdir(parents=True)
    write_jsonl(folder / "round_0" / "generations.jsonl", rows)
    return folder


def test_split_by_prompt_keeps_each_prompt_on_one_side():
    pairs = [{"prompt_id": p, "n": n} for n, p in enumerate("aabcddde")]
    train, held_out = split_by_prompt(pairs, 0.4, seed=1)
    assert {p["prompt_id"] for p in train}.isdisjoint({p["prompt_id"] for p in held_out})
    assert len({p["prompt_id"] for p in held_out}) == 2 and len(train) + len(held_out) == len(pairs)
    assert split_by_prompt(pairs, 0.4, seed=1) == (train, held_out)  # seeded
    assert split_by_prompt(pairs, 0.0, seed=1)[1] == []
    assert split_by_prompt(pairs[:2], 0.9, seed=1)[0]  # one prompt: it trains, nothing is held out


def test_pairs_pool_rounds_drop_repeats_and_pair_right_against_wrong(tmp_path):
    run = fake_run(tmp_path / "run", num_prompts=3)
    pairs = build_pairs(RewardDataArguments(generations_from=[str(run)], min_margin=0.5), seed=0)
    # "No " repeats "no" once normalised, so each prompt pairs its best right answer with one wrong answer.
    assert len(pairs) == 3
    for p in pairs:
        assert p["chosen"][0]["content"].startswith("yes") and p["rejected"][0]["content"] == "no"
        assert p["margin"] == 1.0 and p["prompt"][0]["role"] == "user"
    # A second round with the same texts adds no pair: repeats are dropped across rounds too.
    rows = read_jsonl(run / "round_0" / "generations.jsonl")
    (run / "round_1").mkdir()
    write_jsonl(run / "round_1" / "generations.jsonl", [{**r, "round": 1} for r in rows])
    assert len(build_pairs(RewardDataArguments(generations_from=[str(run)], min_margin=0.5), seed=0)) == 3
    with pytest.raises(ValueError, match="missing is not a folder"):
        build_pairs(RewardDataArguments(generations_from=[str(tmp_path / "missing")]), seed=0)


def test_reward_model_trains_saves_and_scores_through_its_own_template(tmp_path):
    start = build_tiny_bert_reward_model(tmp_path / "tiny-bert")
    run = fake_run(tmp_path / "run", num_prompts=20)
    out = tmp_path / "rm"
    argv = ["--model_name_or_path", str(start), "--generations_from", str(run), "--output_dir", str(out)]
    argv += ["--min_margin", "0.5", "--eval_fraction", "0.25", "--num_train_epochs", "15", "--learning_rate", "1e-3"]
    argv += ["--per_device_train_batch_size", "4", "--bf16", "false", "--report_to", "none", "--save_strategy", "no"]
    assert main(argv) == 0

    metrics = json.loads((out / "reward_model_metrics.json").read_text())
    assert metrics["num_train_pairs"] == 15 and metrics["num_eval_pairs"] == 5
    train = read_jsonl(out / "pairs_train.jsonl")
    held_out = read_jsonl(out / "pairs_eval.jsonl")
    assert {p["prompt_id"] for p in train}.isdisjoint({p["prompt_id"] for p in held_out})
    # "yes ..." against "no" is learnable: held-out prompts are ranked right after training.
    assert metrics["eval/pairwise_accuracy"] == 1.0, metrics
    assert metrics["train/steps"] > 0 and not (out / "start").exists() and not (out / "model.tmp").exists()

    scorer = RewardModelScorer(str(out / "model"))
    assert scorer.tokenizer.chat_template == ENCODER_CHAT_TEMPLATE  # the template travels with the model
    from trl.data_utils import _tokenize

    pair = held_out[0]
    trl_ids = _tokenize(scorer.tokenizer, pair["prompt"] + pair["chosen"])["input_ids"]
    assert scorer.encode([pair["prompt"]], [pair["chosen"]])[0]["input_ids"] == trl_ids  # trained as scored
    assert trl_ids[0] == scorer.tokenizer.cls_token_id
    # The head trained: the saved weights differ from the start's.
    from transformers import AutoModelForSequenceClassification

    before = AutoModelForSequenceClassification.from_pretrained(start).classifier.weight
    assert not torch.allclose(before, scorer.model.classifier.weight)


def test_a_lora_policy_checkpoint_starts_the_reward_model_merged(tiny_model, tmp_path):
    """A round's `checkpoint/` (a LoRA adapter) as `model_name_or_path`: the reward model's backbone is the policy
    with its adapter merged, not the bare base model, and the merged copy is not left behind."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # nonzero: it shows
    policy = get_peft_model(base, config)
    checkpoint = tmp_path / "round_1" / "checkpoint"
    policy.save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(checkpoint)
    merged = policy.merge_and_unload().model.layers[0].self_attn.q_proj.weight

    start = prepare_start_model(str(checkpoint), tmp_path / "start", seed=0)
    rm = AutoModelForSequenceClassification.from_pretrained(start)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).model.layers[0].self_attn.q_proj.weight
    got = rm.model.layers[0].self_attn.q_proj.weight
    assert rm.config.num_labels == 1 and not torch.equal(got, plain)
    torch.testing.assert_close(got, merged)  # the same float32 merge, saved and read back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_1", "start"]


def test_reward_training_refuses_runs_without_pairs(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "round_0").mkdir(parents=True)
    row = {"round": 0, "prompt_id": "q", "sample_index": 0, "prompt": [], "completion": "x", "reward": 1.0}
    write_jsonl(run / "round_0" / "generations.jsonl", [row, {**row, "sample_index": 1, "completion": "y"}])
    argv = ["--model_name_or_path", "unused", "--generations_from", str(run), "--output_dir", str(tmp_path / "o")]
    assert main([*argv, "--bf16", "false"]) == 2
    assert "0 pair(s)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_reward_training_without_held_out_pairs(tmp_path, capsys):
    start = build_tiny_bert_reward_model(tmp_path / "tiny-bert")
    run = fake_run(tmp_path / "run", num_prompts=4)
    argv = ["--model_name_or_path", str(start), "--generations_from", str(run), "--output_dir", str(tmp_path / "rm")]
    argv += ["--eval_fraction", "0", "--num_train_epochs", "1", "--bf16", "false", "--report_to", "none"]
    assert main([*argv, "--save_strategy", "no", "--per_device_train_batch_size", "2"]) == 0
    metrics = json.loads((tmp_path / "rm" / "reward_model_metrics.json").read_text())
    assert metrics["num_eval_pairs"] == 0 and metrics["eval/pairwise_accuracy"] is None
    assert "pairwise accuracy - untrained -> - trained" in capsys.readouterr().out


def arithmetic_run(folder: Path) -> Path:
    """Round 0 of a run on "What is a + b?": per prompt a right worked answer, a right bare one, a wrong one."""
    rows = []
    for i, (a, b) in enumerate([(3, 4), (9, 9)]):
        prompt = [{"role": "user", "content": f"What is {a} + {b}?"}]
        texts = [(f"{a} + {b} = {a + b}", 1.0), (f"{a + b}", 1.0), (f"{a + b + 10}", 0.0)]
        for j, (text, reward) in enumerate(texts):
            rows.append(
                {"round": 0, "prompt_id": f"q{i}", "sample_index": j, "prompt": prompt, "completion": text}
                | {"reward": reward, "completion_tokens": len(text), "finished": True, "selected": False}
            )
    (folder / "round_0").mkdir(parents=True)
    write_jsonl(folder / "round_0" / "generations.jsonl", rows)
    return folder


def test_same_form_pairs_put_each_right_answer_against_itself_off_by_a_little(tmp_path):
    run = arithmetic_run(tmp_path / "run")
    plain = build_pairs(RewardDataArguments(generations_from=[str(run)]), seed=0)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in plain] == [("7", "17"), ("18", "28")]
    args = RewardDataArguments(generations_from=[str(run)], same_form_pairs=2, margin_scale=3.0)
    pairs = build_pairs(args, seed=0)
    made = [(p["prompt_id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs[2:]]
    # Both right answers of each prompt, the worked one and the bare one, each against +1 and -1.
    assert made == [
        ("q0", "3 + 4 = 7", "3 + 4 = 8"),
        ("q0", "3 + 4 = 7", "3 + 4 = 6"),
        ("q0", "7", "8"),
        ("q0", "7", "6"),
        ("q1", "9 + 9 = 18", "9 + 9 = 19"),
        ("q1", "9 + 9 = 18", "9 + 9 = 17"),
        ("q1", "18", "19"),
        ("q1", "18", "17"),
    ]
    assert all(p["same_form"] and p["rejected_reward"] is None for p in pairs[2:])
    assert [p["margin"] for p in pairs] == [3.0] * 10  # the reward gap 1.0, scaled
    assert not any("same_form" in p for p in pairs[:2])
