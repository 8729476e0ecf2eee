"""QLoRA on the CPU (bitsandbytes 0.50 runs nf4 there): a 4-bit base with a LoRA adapter loads, trains with the
right gradients, generates, saves, and resumes through the real command line to the same round. The tiny model is
64 wide, because bitsandbytes' 4-bit layers need inputs at least 64 wide."""

import json
import os
import shutil
import sys

import pytest
import torch
from helpers import REPO, build_tiny_model, recipe_args, run_group
from safetensors.torch import load_file

from rs_trainer.run.io import read_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory, embedded_path):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-64"), embedded_path, hidden=64)


def qlora_args(path, **overrides):
    from trl import ModelConfig

    keys = {"load_in_4bit": True, "use_peft": True, "lora_target_modules": ["all-linear"], "lora_dropout": 0.0}
    return ModelConfig(model_name_or_path=str(path), **{**keys, **overrides})


def load(args):
    from trl import get_peft_config

    from rs_trainer.run.models import load_policy

    return load_policy(args, get_peft_config(args))[0]


def lora_gradients(model, ids) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_4bit_load_has_4bit_base_layers_under_trainable_lora_and_generates(wide_model):
    import bitsandbytes as bnb

    model = load(qlora_args(wide_model))
    bases = [m.base_layer for m in model.modules() if hasattr(m, "lora_A")]
    assert len(bases) == 2 * 7, "all-linear: q, k, v, o, gate, up and down of both layers"
    assert all(isinstance(b, bnb.nn.Linear4bit) for b in bases)
    assert all(b.weight.__class__.__name__ == "Params4bit" and not b.weight.requires_grad for b in bases)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    grads = lora_gradients(model, ids)
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n), "every adapter gets a gradient"
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 11)


def test_lora_gradients_after_generation_equal_those_before(wide_model):
    """bitsandbytes repacks 4-bit weights for fast CPU inference at their first forward in eval mode, and the packed
    path has no backward (on CPUs with AVX512-BF16): `load_policy` keeps them unpacked, so the SFT after a round's
    generation gets the same gradients as a model that never generated."""
    model = load(qlora_args(wide_model))
    ids = torch.tensor([[5, 17, 9, 42, 7, 3, 11, 2]])
    before = lora_gradients(model, ids)
    model.eval()
    with torch.no_grad():
        model.generate(input_ids=ids[:, :4], attention_mask=torch.ones_like(ids[:, :4]), max_new_tokens=4)
    after = lora_gradients(model, ids)
    for name, grad in before.items():
        assert torch.equal(grad, after[name]), f"{name}: the gradient changed after generation"


def test_8bit_loads_and_trains_on_the_cpu_too(wide_model):
    import bitsandbytes as bnb

    model = load(qlora_args(wide_model, load_in_4bit=False, load_in_8bit=True))
    assert all(isinstance(m.base_layer, bnb.nn.Linear8bitLt) for m in model.modules() if hasattr(m, "lora_A"))
    grads = lora_gradients(model, torch.tensor([[1, 2, 3, 4, 5, 6]]))
    assert grads and any(g.abs().sum() > 0 for g in grads.values())


def test_under_fsdp_4bit_weights_and_lora_share_the_model_dtype(wide_model, monkeypatch):
    """FSDP shards parameters of one dtype; with TRL's default storage (uint8) the 4-bit weights stay whole."""
    from rs_trainer.run.models import quantization_config

    args = qlora_args(wide_model, dtype="bfloat16")
    assert quantization_config(args).bnb_4bit_quant_storage == torch.uint8  # one process: TRL's default
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert quantization_config(args).bnb_4bit_quant_storage == torch.bfloat16
    mine = qlora_args(wide_model, dtype="bfloat16", bnb_4bit_quant_storage="float16")
    assert quantization_config(mine).bnb_4bit_quant_storage == torch.float16  # set by the user: kept
    model = load(args)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert any(p.__class__.__name__ == "Params4bit" for p in model.parameters())


def run_args(model, out):
    return recipe_args(
        model,
        out,
        num_rounds=2,
        load_in_4bit=True,
        use_peft=True,
        lora_target_modules=["all-linear"],
        lora_dropout=0.0,
        report_to="none",
        reward_funcs=["tests.scorers_for_tests.length_reward"],
    )


def run_in_process(args: list[str], cwd) -> None:
    """`python -m rs_trainer` in a new process on one thread: the resumed run must compute exactly what the
    uninterrupted one did, and float sums on several threads need not come out the same from run to run."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rs_trainer", *args]
    proc = run_group(cmd, timeout=600, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def qlora_run(wide_model, tmp_path_factory):
    """Two rounds of QLoRA through the command line, uninterrupted."""
    out = tmp_path_factory.mktemp("qlora") / "run"
    run_in_process(run_args(wide_model, out), out.parent)
    return out


def test_a_qlora_run_trains_and_saves_an_adapter_that_loads_on_a_4bit_base(qlora_run, wide_model):
    from peft import PeftModel

    out = qlora_run
    for r in range(2):
        metrics = json.loads((out / f"round_{r}" / "metrics.json").read_text())
        assert metrics["train/steps"] > 0 and metrics["rs/num_selected"] == 4
    adapters = [load_file(out / f"round_{r}" / "checkpoint" / "adapter_model.safetensors") for r in range(2)]
    assert all("lora_" in k for k in adapters[1]), "the checkpoint holds the adapter, not the 4-bit base"
    lora_b = {k: v for k, v in adapters[1].items() if "lora_B" in k}
    assert len(lora_b) == 2 * 7 and all(v.abs().sum() > 0 for v in lora_b.values()), "LoRA B starts at zero"
    assert any(not torch.equal(adapters[0][k], adapters[1][k]) for k in lora_b), "round 1 trained the adapter"

    base = load(qlora_args(wide_model, use_peft=False))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, out / "round_1" / "checkpoint").eval()(input_ids=ids).logits
    assert not torch.allclose(plain, tuned), "the saved adapter changes the 4-bit model's output"


def outcome(out, r):
    """What round `r` left, without wall-clock fields."""
    rdir = out / f"round_{r}"
    metrics = json.loads((rdir / "metrics.json").read_text())
    return {
        "rows": [{k: v for k, v in x.items() if k != "generated_at"} for x in read_jsonl(rdir / "generations.jsonl")],
        "sft": read_jsonl(rdir / "sft.jsonl"),
        "metrics": {k: v for k, v in metrics.items() if not k.startswith("timing/") and not k.endswith("_per_s")},
        "adapter": (rdir / "checkpoint" / "adapter_model.safetensors").read_bytes(),
    }


def test_a_qlora_run_resumes_to_the_round_it_lost(qlora_run, wide_model, tmp_path):
    """Round 1 deleted: a new process loads round 0's adapter into a fresh 4-bit base and redoes round 1 alike."""
    out = tmp_path / "run"
    shutil.copytree(qlora_run, out)
    shutil.rmtree(out / "round_1")
    saved = (out / "round_0" / "checkpoint" / "adapter_model.safetensors").stat().st_mtime_ns
    run_in_process(run_args(wide_model, out), tmp_path)
    assert (out / "round_0" / "checkpoint" / "adapter_model.safetensors").stat().st_mtime_ns == saved
    # Exact, floats and adapter bytes included: the same adapter bits on the same 4-bit base, one thread, the same
    # rows in the same order (`run_in_process`).
    assert outcome(out, 1) == outcome(qlora_run, 1)
