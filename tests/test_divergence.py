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
    # Exactly 0: LoRA B starts at zero, so the adapter adds exact zeros and both passes compute the same logits.
    assert out["kl_sum"] == 0.0 and out["tokens"] == 6 and out["samples"] == 2
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
        max_kl=1e-3,
        max_kl_action="stop",
    )
    assert main(argv) == 0
    m0 = json.loads((out / "round_0" / "metrics.json").read_text())
    # Round 0 samples the base model itself: 0, up to the sampler's incremental decoding against one full pass.
    # Each sample's two float32 sums (<= 8 log-probabilities of ~-10.8, ulp 9.5e-7; sums near -86, ulp 7.6e-6)
    # differ by ~8 * 2 ulps + 1 ulp ~ 2.3e-5 at most, so abs=5e-5; a log-probability at another temperature or of
    # another token is off by more than 1e-2.
    assert m0["rs/kl_ref"] == pytest.approx(0.0, abs=5e-5) and m0["rs/entropy"] > 0
    assert m0["rs/kl_from_sampler"] == 1.0
    assert not (out / "round_1" / "metrics.json").exists() and not (out / "round_1" / "checkpoint").exists()
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "round 1: KL to the base model" in err and "passed `max_kl` 0.001; stopping" in err
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


def test_the_rs_engines_logprobs_and_entropies_are_the_policys_side_of_the_drift(tiny_model):
    """The `rs` engine's per-row sums (from the logits it decoded with, at temperature 0.8 with top-k) equal a
    plain forward pass at temperature 1 over the same tokens, so the drift measurement can skip that pass and give
    the same KL and entropy."""
    from rs_trainer.phases.generation import SamplingParams, _rs_generate

    model = lora(tiny_model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.5)
    model.eval()
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]
    params = SamplingParams(temperature=0.8, top_k=20, max_new_tokens=6)
    eos = [3]
    generated, (logprobs, entropies) = _rs_generate(
        model, torch.tensor(prompts), torch.ones(2, 4, dtype=torch.long), 3, params, eos, 0, seed=7
    )
    exs = []
    for row, tokens in enumerate(generated):
        end = next((j for j, t in enumerate(tokens) if t in eos), None)
        exs.append(build_example(prompts[row // 3], tokens if end is None else tokens[: end + 1], 64))
    for ex, lp, ent in zip(exs, logprobs, entropies, strict=True):
        assert (lp, ent) == pytest.approx(manual(model, ex), rel=1e-4, abs=1e-4)
    full = kl_and_entropy(model, exs, pad_id=0, batch_size=4)
    given = kl_and_entropy(model, exs, pad_id=0, batch_size=4, policy_logprobs=logprobs, entropy_sums=entropies)
    assert full["kl_sum"] > 0.01
    assert given == pytest.approx(full, rel=1e-4, abs=1e-4)
    unknown = kl_and_entropy(model, exs, pad_id=0, batch_size=4, policy_logprobs=logprobs)
    assert unknown["entropy_sum"] is None and unknown["kl_sum"] == pytest.approx(full["kl_sum"], rel=1e-4, abs=1e-4)
