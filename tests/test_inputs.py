"""Bad input is refused up front with a message that names the fix, and leaves no output behind."""

import json

import pytest
from helpers import recipe_args, write_jsonl

from rs_trainer.cli import main, parse_args
from rs_trainer.config import RSConfig
from rs_trainer.errors import ConfigError


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def assert_refused(argv, capsys, output_dir, *needles):
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    for needle in needles:
        assert needle in err, err
    assert not output_dir.exists() or not any(output_dir.glob("round_*")), "a refused run left output behind"


def test_unknown_recipe_key_is_named(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: x\nnum_sampels_per_prompt: 4\n")
    code, err = run_cli(["--config", str(recipe)], capsys)
    assert code == 2 and "num_sampels_per_prompt" in err


def test_unknown_command_line_key_is_named(tiny_model, tmp_path, capsys):
    code, err = run_cli(recipe_args(tiny_model, tmp_path / "o") + ["--temprature", "0.5"], capsys)
    assert code == 2 and "--temprature" in err


def test_missing_prompt_column(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "hi", "answer": "1"}])
    out = tmp_path / "o"
    argv = recipe_args(tiny_model, out, dataset_name=str(data), dataset_test_split=None, selection_top_k=1)
    assert_refused(argv, capsys, out, "no prompt column `prompt`", "question", "prompt_column")


def test_empty_prompt(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "answer": "1"}, {"prompt": "  ", "answer": "2"}])
    out = tmp_path / "o"
    argv = recipe_args(tiny_model, out, dataset_name=str(data), dataset_test_split=None, selection_top_k=1)
    assert_refused(argv, capsys, out, "'train-000001' (row 1) is empty")


def test_malformed_jsonl_line_gives_its_number(tiny_model, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n{"prompt": "c", \n')
    out = tmp_path / "o"
    argv = recipe_args(tiny_model, out, dataset_name=str(data), dataset_test_split=None, selection_top_k=1)
    assert_refused(argv, capsys, out, "line 3 is not valid JSON")


def test_top_k_larger_than_m_times_n(tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    argv = recipe_args(tiny_model, out, selection_top_k=13)  # 6 prompts x 2 samples = 12
    assert_refused(argv, capsys, out, "`selection_top_k` (13) is larger than prompts x samples (6 x 2 = 12)")


def test_num_samples_below_one(tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    assert_refused(recipe_args(tiny_model, out, num_generations=0), capsys, out, "num_generations")


def test_prompt_longer_than_context(short_context_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "word " * 80, "answer": "1"}])
    out = tmp_path / "o"
    argv = recipe_args(short_context_model, out, dataset_name=str(data), dataset_test_split=None, selection_top_k=1)
    assert_refused(argv, capsys, out, "'train-000000'", "exceeds the model's context of 64")


def test_greedy_with_several_samples_is_refused():
    with pytest.raises(ConfigError, match="temperature` 0"):
        RSConfig(temperature=[0.0], num_generations=4)


def test_lora_keys_without_peft_are_refused(tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    argv = recipe_args(tiny_model, out, use_peft=False, lora_r=8)
    assert_refused(argv, capsys, out, "lora_r", "use_peft")


def test_per_round_values_repeat_the_last():
    args = RSConfig(temperature=[0.9, 0.7], max_completion_length=32)
    assert [args.for_round("temperature", r) for r in range(4)] == [0.9, 0.7, 0.7, 0.7]
    assert args.for_round("max_completion_length", 3) == 32


def test_per_round_list_from_command_line(tiny_model, tmp_path):
    args, _ = parse_args(recipe_args(tiny_model, tmp_path) + ["--temperature", "1.0", "0.5"])
    assert args.temperature == [1.0, 0.5]


def test_verifier_without_its_ground_truth_column_is_refused(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "What is 2 + 2?"}, {"prompt": "What is 3 + 3?"}])
    out = tmp_path / "o"
    argv = recipe_args(
        tiny_model,
        out,
        dataset_name=str(data),
        dataset_test_split=None,
        selection_top_k=1,
        reward_funcs=["numeric_answer"],
    )
    assert_refused(argv, capsys, out, "needs the ground-truth column `answer`", "reward_funcs")


def test_dry_run_prints_the_plan_without_loading_a_model(tmp_path, capsys):
    import json

    out = tmp_path / "o"
    argv = [
        "--model_name_or_path",
        "some-org/some-model",  # a hub id: never loaded by a dry run
        "--output_dir",
        str(out),
        "--dry_run",
        "true",
        "--prompts_per_round",
        "10",
        "--num_generations",
        "4",
        "--max_completion_length",
        "16",
        "32",
        "--num_rounds",
        "2",
    ]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["prompts_per_round"] == 10 and plan["generations_per_round"] == 40
    assert plan["max_completion_tokens_per_round"] == [640, 1280]
    assert plan["world_size"] == 1 and plan["output_dir"] == str(out)
    assert not out.exists()  # nothing written, and the missing model was never loaded


def test_gpu_accelerate_config_on_a_cpu_machine_is_refused(tmp_path):
    import os
    import sys

    import torch
    from helpers import REPO, run_group

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate_configs/single_gpu.yaml"),
        "-m",
        "rs_trainer",
        "--model_name_or_path",
        "x",
        "--output_dir",
        str(tmp_path / "o"),
        "--dry_run",
        "true",
    ]
    proc = run_group(cmd, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "accelerate_configs/cpu.yaml" in proc.stderr


def test_use_peft_flips_on_the_command_line_but_a_contradictory_recipe_is_refused(tmp_path):
    from helpers import REPO

    lora_recipe = str(REPO / "recipes/smollm2/arithmetic_lora.yaml")
    _, model_args = parse_args(["--config", lora_recipe, "--use_peft", "false"])
    assert model_args.use_peft is False  # LoRA off with one key
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nuse_peft: false\nlora_r: 8\n")
    with pytest.raises(ConfigError, match=r"\['lora_r'\] are set but `use_peft` is false"):
        parse_args(["--config", str(bad)])


def test_unknown_dedupe_mode_is_refused_and_null_turns_it_off():
    with pytest.raises(ConfigError, match=r"`dedupe` must be exact, normalised or null, got 'fuzzy'"):
        RSConfig(dedupe="fuzzy")
    assert RSConfig(dedupe="none").dedupe is None


def test_a_run_saved_without_newer_keys_is_not_a_changed_config():
    from rs_trainer.config import config_changes

    new = json.loads(json.dumps(RSConfig(num_generations=4).to_dict(), default=str))
    saved = {k: v for k, v in new.items() if k not in ("temperature_grid", "matched_random")}  # keys added later
    assert config_changes(saved, new) == []
    assert config_changes({**saved, "num_generations": 8}, new) == ["num_generations"]
    newer = json.loads(json.dumps(RSConfig(num_generations=4, matched_random=True).to_dict(), default=str))
    assert config_changes(saved, newer) == ["matched_random"]  # a newer key away from its default counts
    assert config_changes({**saved, "output_dir": "elsewhere", "report_to": ["none"]}, new) == []


def test_the_old_key_spellings_are_gone():
    """The aliases kept "for one release" were removed before any release: each is an unknown key now."""
    for old in ("num_samples_per_prompt", "max_new_tokens", "sft_epochs", "sampling_top_k", "eval_split"):
        with pytest.raises(TypeError, match=old):
            RSConfig(**{old: 1})
    with pytest.raises(ConfigError, match=r"unknown keys \['max_new_tokens'\]"):
        RSConfig(generators=[{"name": "policy", "max_new_tokens": 7}])


def test_a_builtin_task_owns_its_data_and_names_its_verifier():
    from rs_trainer.rewards import resolve_scorer
    from rs_trainer.run.data import load_prompts
    from rs_trainer.tasks import TASKS

    args = RSConfig(task_num_train=5, task_num_eval=3)
    rows = load_prompts(args, "test")
    verifier = resolve_scorer(TASKS["arithmetic"].VERIFIER)
    completions = [[{"role": "assistant", "content": f"It is {row['answer']}"}] for row in rows]
    assert verifier([row["prompt"] for row in rows], completions, answer=[row["answer"] for row in rows]) == [1.0] * 3
    with pytest.raises(ConfigError, match="the built-ins are: builtin:arithmetic"):
        load_prompts(RSConfig(dataset_name="builtin:algebra"), "train")


def test_trl_vllm_keys_and_generators_on_the_command_line_make_the_same_entries(tiny_model, tmp_path):
    """TRL's `use_vllm` switches and a `--generators` YAML mapping give the policy's generator alike; several
    entries as several arguments or one YAML list."""
    base = recipe_args(tiny_model, tmp_path / "o")
    trl, _ = parse_args([*base, "--use_vllm", "true", "--vllm_gpu_memory_utilization", "0.5"])
    expected = {"name": "policy", "engine": "vllm", "gpu_memory_utilization": 0.5, "tensor_parallel_size": 1}
    assert trl.generators == [{**expected, "enable_sleep_mode": False}]
    listed, _ = parse_args([*base, "--generators", "{name: policy, engine: vllm, gpu_memory_utilization: 0.5}"])
    assert [vars(s) for s in listed.generator_specs()] == [vars(s) for s in trl.generator_specs()]
    two = ["{name: policy, num_generations: 2}", "{name: teacher, model: org/teacher, num_generations: 1}"]
    several, _ = parse_args([*base, "--generators", *two])
    one_list, _ = parse_args([*base, "--generators", f"[{two[0]}, {two[1]}]"])
    assert (
        several.generators
        == one_list.generators
        == [
            {"name": "policy", "num_generations": 2},
            {"name": "teacher", "model": "org/teacher", "num_generations": 1},
        ]
    )
    assert several.samples_per_prompt() == 3
    server, _ = parse_args([*base, "--use_vllm", "true", "--vllm_mode", "server", "--use_peft", "true"])
    assert server.generators == [
        {"name": "policy", "engine": "openai", "base_url": "http://0.0.0.0:8000/v1"}
        | {"model": str(tiny_model), "adapter_api": "vllm"}
    ]
