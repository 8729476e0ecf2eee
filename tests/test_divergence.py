"""KL to the base model and entropy, from the policy's own samples: exact on hand-checkable cases, in the round's
metrics and report, and `max_kl` stops a run that drifts too far."""

import json

import pytest
import torch
from helpers import recipe_args
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from rs_trainer.cli import main
from rs_trainer.phases.divergence import kl_and_entropy
from rs_trainer.phases.sft import build_example


def lora(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))


def examples():
    return [build_example([5, 6, 7], [20, 21, 22, 23], 64), build_example([8, 9], [30, 31], 64)]


def manual(model, ex):
    """Summed log-probability and entropy of the completion tokens, with one plain forward pass."""
    ids = torch.tensor([ex["input_ids"]])
    with torch.no_grad():
        log_p = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    positions = [t - 1 for t, label in enumerate(ex["labels"]) if label != -100]
    logprob = sum(log_p[t, ex["input_ids"][t + 1]].item() for t in positions)
    entropy = sum(-(log_p[t].exp() * log_p[t]).sum().item() for t in positions)
    return logprob, entropy


def test_kl_is_zero_before_training_and_matches_a_direct_computation_after(tiny_model):
    model = lora(tiny_model)
    out = kl_and_entropy(model, examples(), pad_id=0, batch_size=2)
    assert out["kl_sum"] == 0.0 and out["tokens"] == 6 and out["samples"] == 2  # LoRA B starts at zero
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    out = kl_and_entropy(model, examples(), pad_id=0, batch_size=1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    kl = entropy = 0.0
    for ex in examples():
        lp_policy, ent = manual(model, ex)
        lp_base, _ = manual(base, ex)
        kl += lp_policy - lp_base
        entropy += ent
    assert abs(out["kl_sum"]) > 1e-3
    assert abs(out["kl_sum"] - kl) < 1e-3 and abs(out["entropy_sum"] - entropy) < 1e-3


def test_drift_is_in_the_metrics_and_max_kl_stops_the_run(tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    argv = recipe_args(
        tiny_model,
        out,
        num_rounds=3,
        use_peft=True,
        lora_target_modules=["q_proj", "v_proj"],
        learning_rate=0.05,
        num_train_epochs=3,
        max_completion_length=8,
        dataset_test_split=None,
        report_to="none",
        reward_funcs=["tests.scorers_for_tests.length_reward"],
        max_kl=1e-6,
        max_kl_action="stop",
    )
    assert main(argv) == 0
    m0 = json.loads((out / "round_0" / "metrics.json").read_text())
    assert m0["rs/kl_ref"] == 0.0 and m0["rs/entropy"] > 0  # round 0 samples the base model itself
    assert not (out / "round_1" / "metrics.json").exists() and not (out / "round_1" / "checkpoint").exists()
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "round 1: KL to the base model" in err and "passed `max_kl` 1e-06; stopping" in err
    assert len(json.loads((out / "summary.json").read_text())) == 1


@pytest.mark.parametrize(("kl_samples", "measured"), [(5, 5), (0, 12)])
def test_drift_is_measured_on_a_seeded_draw_of_kl_samples(tiny_model, tmp_path, kl_samples, measured):
    """Two forward passes per sample cost more than sampling did: `kl_samples` caps them (0: every sample)."""
    out = tmp_path / "o"
    argv = recipe_args(
        tiny_model,
        out,
        use_peft=True,
        lora_target_modules=["q_proj", "v_proj"],
        dataset_test_split=None,
        report_to="none",
        kl_samples=kl_samples,
    )
    assert main(argv) == 0
    metrics = json.loads((out / "round_0" / "metrics.json").read_text())
    assert metrics["rs/kl_samples"] == measured and metrics["rs/entropy"] > 0
