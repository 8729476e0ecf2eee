"""`--dry_run`'s memory estimate (`rs_trainer.run.memory`), against figures computed by hand and the parameter counts
the model makers publish, from each model's config.json alone."""

import json

import pytest
from helpers import PUBLISHED_PARAMETERS, REPO, model_config_folder, write_jsonl

from rs_trainer.cli import main, memory_plan, parse_args
from rs_trainer.run.memory import lora_parameters, model_shape


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameters_counted_from_the_config_alone_are_the_published_ones(name, tmp_path):
    from transformers import AutoConfig

    shape = model_shape(AutoConfig.from_pretrained(model_config_folder(name, tmp_path)))
    assert shape.parameters == PUBLISHED_PARAMETERS[name]


def test_lora_and_kv_cache_counts_for_llama_3_1_8b(tmp_path):
    """r = 16 on every linear layer of Llama-3.1-8B: per layer 16 x ((4096 + 4096) x 2 + (4096 + 1024) x 2
    + (4096 + 14336) x 3) = 1,310,720, x 32 layers (PEFT prints the same 41,943,040); its KV cache 2 x 32 layers x 8
    heads x 128 = 65,536 values a token, 128 KiB in bf16, so its whole 131,072-token context is 16 GiB."""
    from transformers import AutoConfig

    shape = model_shape(AutoConfig.from_pretrained(model_config_folder("meta-llama/Llama-3.1-8B-Instruct", tmp_path)))
    assert lora_parameters(shape, 16, "all-linear") == 41_943_040
    assert lora_parameters(shape, 16, ["q_proj", "v_proj"]) == 32 * 16 * (8192 + 5120)
    assert shape.kv_bytes_per_token_per_byte * 2 * 131_072 == 16 * 2**30


def test_the_gpu_recipe_dry_run_prints_its_memory_per_gpu(tmp_path, capsys, monkeypatch):
    """recipes/qwen2.5-1.5b/gsm8k_vllm.yaml on one GPU, by hand: LoRA r = 32 on every linear layer is 36,929,536
    float32 parameters; weights 1,543,714,304 x 2 + 36,929,536 x 4 bytes = 3.0130 GiB, gradients 0.1376 and AdamW's
    moments 0.2751 GiB; the sampler's KV cache at the GPU's 262,144-token budget is 262,144 x 2 x 28 x 2 x 128 x 2
    bytes = 7 GiB; vLLM's own copy of the weights 2.875 GiB, inside its 30%."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")  # as `accelerate launch` on a GPU config sets it
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(4)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    folder = model_config_folder("Qwen/Qwen2.5-1.5B-Instruct", tmp_path / "qwen")
    argv = ["--config", str(REPO / "recipes/qwen2.5-1.5b/gsm8k_vllm.yaml"), "--dataset_name", str(data)]
    argv += ["--eval_dataset_name", str(data)]
    argv += ["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "o"), "--dry_run", "true"]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)["memory_per_gpu"]
    gib = 2**30
    assert plan["parameters"] == 1_543_714_304 and plan["trainable_parameters"] == 36_929_536
    assert (plan["processes"], plan["sharded"], plan["token_budget"]) == (1, False, 262_144)
    expected = {
        "weights_gib": (1_543_714_304 * 2 + 36_929_536 * 4) / gib,
        "gradients_gib": 36_929_536 * 4 / gib,
        "optimizer_gib": 2 * 36_929_536 * 4 / gib,
        "kv_cache_gib": 7.0,
        "vllm_weights_gib": 1_543_714_304 * 2 / gib,
        "vllm_share_of_gpu": 0.3,
    }
    for key, value in expected.items():
        assert plan[key] == pytest.approx(value, rel=1e-12), key  # the same integer arithmetic: no tolerance needed
    assert round(plan["weights_gib"], 4) == 3.0130 and round(plan["vllm_weights_gib"], 3) == 2.875


def test_full_fine_tuning_under_zero3_splits_everything_but_the_sampling_copy(tmp_path):
    """Qwen2.5-7B in bf16, full fine-tuning, ZeRO-3 over 16 processes (its recipe's launch): (2 + 2 + 4) bytes x
    7,615,616,512 / 16 = 3.5463 GiB a GPU to train, and 14.185 GiB (the whole bf16 model) gathered to sample."""
    folder = model_config_folder("Qwen/Qwen2.5-7B-Instruct", tmp_path / "qwen7")
    recipe = ["--config", str(REPO / "recipes/qwen2.5-7b/numinamath_full_zero3.yaml")]
    args, model_args = parse_args(
        [*recipe, "--model_name_or_path", str(folder), "--dataset_name", "builtin:arithmetic"]
    )
    plan = memory_plan(args, model_args, processes=16, sharded=True, gpu=True)
    assert plan["trainable_parameters"] == 7_615_616_512 and plan["token_budget"] == 262_144
    assert plan["training_gib"] == pytest.approx(8 * 7_615_616_512 / 16 / 2**30, rel=1e-12)
    assert round(plan["training_gib"], 4) == 3.5463 and round(plan["sampling_weights_gib"], 3) == 14.185
