"""A user's mistake is a one-line message that names the key and the fix, exit code 2, and nothing written.
Each case here is listed, with its message, in docs/errors.md."""

import os
import sys
import warnings

import pytest
from helpers import REPO, recipe_args, run_group, write_jsonl

from rs_trainer.cli import main
from rs_trainer.config import RSConfig
from rs_trainer.errors import ConfigError


def refused(argv, capsys, *needles) -> str:
    """Run the command line in-process; it must refuse with exit code 2, one line naming `needles`, no output."""
    out = argv[argv.index("--output_dir") + 1] if "--output_dir" in argv else None
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("rs_trainer: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    print(lines[0])  # `pytest -s tests/test_mistakes.py` lists every message, as docs/errors.md does
    if out:
        assert not os.path.exists(out) or not os.listdir(out), f"a refused run wrote {os.listdir(out)}"
    return lines[0]


# ---- recipe values, refused before anything is loaded
@pytest.mark.parametrize(
    "overrides,needles",
    [
        ({"learning_rate": 0.0}, ["`learning_rate` must be > 0"]),
        ({"learning_rate": -1e-4}, ["`learning_rate` must be > 0"]),
        ({"num_rounds": 0}, ["`num_rounds` must be at least 1"]),
        (
            {"selection": "best_of_n", "selection_top_k": 5},
            ["`selection_top_k` is set but `selection` is 'best_of_n'"],
        ),
        (
            {"selection": "top_k", "selection_top_k": 2, "reward_threshold": 0.5},
            ["`reward_threshold` is set", "threshold"],
        ),
        (
            {"selection": "best_of_n", "selection_top_k": None, "k_per_prompt": 2},
            ["`k_per_prompt` is set", "top_k_per_prompt"],
        ),
        ({"lr_scheduler_type": "cosine_annealing"}, ["`lr_scheduler_type` 'cosine_annealing' is unknown"]),
        ({"warmup_ratio": 1.5}, ["`warmup_ratio`", "0..1"]),
        ({"max_grad_norm": -1.0}, ["`max_grad_norm` must be >= 0"]),
        ({"top_p": 0.0}, ["`top_p` values must lie in (0, 1]"]),
        ({"report_to": "tensorbord"}, ["`report_to` ['tensorbord'] unknown"]),
        ({"report_to": "wandb"}, ["`report_to` wandb needs its package", "pip install wandb"]),
        ({"prompts_per_round": 0}, ["`prompts_per_round` must be at least 1"]),
        ({"generation_batch_size": -8}, ["`generation_batch_size` must be >= 0"]),
        ({"temperature": [-0.5]}, ["`temperature` for round 0 is negative"]),
        ({"kl_samples": -1}, ["`kl_samples` must be >= 0"]),
        ({"temperature": ["hot"]}, ["`temperature` for round 0 is 'hot'", "`auto`"]),
        ({"temperature": "auto", "temperature_grid": [0.0, 1.0]}, ["`temperature_grid` values must be > 0"]),
        ({"temperature": "auto", "temperature_probe_prompts": 0}, ["`temperature_probe_prompts` must be at least 1"]),
        ({"use_peft": True, "lora_r": 0}, ["`lora_r` must be at least 1 (the adapter's rank), got 0"]),
        ({"use_peft": True, "lora_alpha": 0}, ["`lora_alpha` must be > 0"]),
        ({"use_peft": True, "lora_dropout": 1.0}, ["`lora_dropout` must lie in [0, 1), got 1.0"]),
        (
            {"eval_splits": ["heldout", "phrasing"]},
            ["`eval_splits` 'phrasing' is not an evaluation split of builtin:arithmetic", "heldout, phrasings, words"],
        ),
        ({"eval_splits": ["words", "heldout", "words"]}, ["`eval_splits` names 'words' twice"]),
        (
            {"eval_splits": ["heldout", "words"], "dataset_test_split": None},
            ["`eval_splits` names heldout but `dataset_test_split` is null", "leave heldout out of `eval_splits`"],
        ),
        (
            {"dataset_train_split": "phrasings"},
            ["holds 'phrasings', the `dataset_train_split`: it would evaluate on the training prompts"],
        ),
        ({"task_num_eval_ood": 0}, ["`task_num_eval_ood` must be at least 1, got 0", "leave the task's"]),
        ({"reward_model_refresh_pairs": 8}, ["`reward_model_refresh_pairs` is set but `reward_model_refresh` is not"]),
        (
            {"reward_model_refresh": "recipes/smollm2/reward_model.yaml"},
            ["`reward_model_refresh` replaces the one `reward_model:` scorer of `reward_funcs`, which has 0"],
        ),
        (
            {
                "reward_model_refresh": "recipes/smollm2/no_such_recipe.yaml",
                "reward_funcs": ["reward_model:rm"],
                "eval_reward_funcs": ["numeric_answer"],
            },
            ["`reward_model_refresh` recipes/smollm2/no_such_recipe.yaml does not exist"],
        ),
        (
            {"reward_model_refresh": "recipes/smollm2/reward_model.yaml", "reward_funcs": ["reward_model:rm"]},
            ["`reward_model_refresh` ranks each round's samples with `eval_reward_funcs`", "numeric_answer"],
        ),
        ({"matched_random": "sometimes"}, ["--matched_random", "Truthy value expected: got sometimes"]),
        ({"verifier_timeout": 0}, ["`verifier_timeout`", "0"]),
        ({"push_to_hub": True}, ["`push_to_hub` needs `hub_model_id`"]),
        ({"verifier_workers": 0}, ["`verifier_workers`", "0"]),
        # TRL's vLLM keys
        ({"vllm_gpu_memory_utilization": 0.5}, ["`vllm_gpu_memory_utilization` set but `use_vllm` is false"]),
        ({"use_vllm": True, "vllm_mode": "remote"}, ["`vllm_mode` must be colocate or server, got 'remote'."]),
        ({"use_vllm": True, "vllm_gpu_memory_utilization": 1.5}, ["`vllm_gpu_memory_utilization`", "1.5"]),
        (
            {"use_vllm": True, "generators": "{name: policy, engine: vllm}"},
            ["`use_vllm` describes the policy's one generator", "set `engine: vllm` on the policy's entry"],
        ),
        ({"generators": "policy"}, ["--generators", "'policy' is not a generator entry", "{name: policy, engine"]),
        (
            {"use_vllm": True, "vllm_mode": "server", "use_peft": False},
            ["`vllm_mode: server` hot-loads each round's LoRA adapter", "needs `use_peft: true`"],
        ),
    ],
)
def test_recipe_values_are_refused(tiny_model, tmp_path, capsys, overrides, needles):
    if overrides.get("report_to") == "wandb":
        import importlib.util

        if importlib.util.find_spec("wandb"):
            pytest.skip("wandb is installed here")
    refused(recipe_args(tiny_model, tmp_path / "o", **overrides), capsys, *needles)


def test_a_refresh_recipe_measuring_arithmetic_on_another_dataset(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}])
    argv = recipe_args(
        tiny_model,
        tmp_path / "o",
        dataset_name=str(data),
        dataset_test_split=None,
        selection_top_k=1,
        reward_funcs=["reward_model:rm"],
        eval_reward_funcs=["numeric_answer"],
        reward_model_refresh="recipes/smollm2/reward_model.yaml",
    )
    refused(argv, capsys, "`reward_model_refresh` recipes/smollm2/reward_model.yaml measures same-form", "set it to 0")


def test_a_local_file_with_an_eval_split_would_evaluate_on_training_prompts(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}])
    argv = recipe_args(
        tiny_model, tmp_path / "o", dataset_name=str(data), selection_top_k=1
    )  # dataset_test_split: test (default)
    refused(argv, capsys, "`dataset_test_split` 'test' would evaluate on the training prompts", "eval_dataset_name")


def test_a_dataset_file_that_does_not_exist(tiny_model, tmp_path, capsys):
    argv = recipe_args(tiny_model, tmp_path / "o", dataset_name=str(tmp_path / "nope.jsonl"), selection_top_k=1)
    line = refused(argv, capsys, "`dataset_name`", "nope.jsonl does not exist", "check the path")
    assert "would evaluate on the training prompts" not in line


# ---- a recipe's values of the wrong type, refused by name before any other check
def write_recipe(tmp_path, model, text: str) -> list[str]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name_or_path: {model}\ntask_num_train: 6\n{text}\n")
    return ["--config", str(recipe), "--output_dir", str(tmp_path / "o")]


@pytest.mark.parametrize(
    "yaml_text,needles",
    [
        ("learning_rate: [1, 2]", ["`learning_rate` takes a number, got the list [1, 2]", "give one value"]),
        ("learning_rate: [1, 2]\nselection: top_k", ["`learning_rate` takes a number"]),  # each key alone first
        ("num_rounds: off", ["`num_rounds` takes a whole number, got false", "YAML reads on/off"]),
        ("num_rounds: 2.5", ["`num_rounds` takes a whole number, got 2.5"]),
        ("top_p: [0.9, high]", ["`top_p` takes numbers, got 'high'"]),
        ("warmup_ratio: .nan", ["`warmup_ratio` must lie in 0..1"]),
        ("temperature: off", ["`temperature` for round 0 is False", "give a number or `auto`"]),
        ("dedupe: on", ["`dedupe` takes text, got the boolean true", "put the value in quotes"]),
        ("reward_funcs: [1]", ["`reward_funcs[0]` is 1", "give a scorer's name or a `kind: judge` mapping"]),
        ("use_peft: true\nlora_r: [8, 16]", ["`lora_r` takes a whole number, got the list [8, 16]"]),
    ],
)
def test_recipe_values_of_the_wrong_type_are_refused(tiny_model, tmp_path, capsys, yaml_text, needles):
    refused(write_recipe(tmp_path, tiny_model, yaml_text), capsys, *needles)


def test_yaml_on_and_off_mean_on_and_off(tiny_model, tmp_path):
    """YAML 1.1 reads `on`, `off`, `yes` and `no` as booleans; a key whose values are words takes them as meant."""
    from rs_trainer.cli import parse_args

    args, _ = parse_args(write_recipe(tmp_path, tiny_model, "kl_to_base: off\ndedupe: off\ndataset_test_split: no"))
    assert (args.kl_to_base, args.dedupe, args.dataset_test_split) == ("off", None, None)
    args, _ = parse_args(write_recipe(tmp_path, tiny_model, "kl_to_base: on\nlearning_rate: 2e-4\ntop_p: [1, 0.9]"))
    assert (args.kl_to_base, args.learning_rate, args.top_p) == ("on", 2e-4, [1.0, 0.9])


def test_every_numeric_key_has_its_range_on_its_field():
    import dataclasses
    import typing

    from rs_trainer.config.checks import annotation

    hints = typing.get_type_hints(RSConfig)
    numeric = {f.name for f in dataclasses.fields(RSConfig) if annotation(hints[f.name])[0] in (int, float)}
    ranged = {f.name for f in dataclasses.fields(RSConfig) if "range" in f.metadata}
    assert numeric - {"temperature"} == ranged  # temperature: a number or `auto`, checked on its own
    assert len(ranged) == 49


def test_per_round_values_beyond_num_rounds_warn():
    with pytest.warns(UserWarning, match=r"`temperature` has 3 values for 1 round\(s\)"):
        RSConfig(num_rounds=1, temperature=[0.9, 0.8, 0.7])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RSConfig(num_rounds=3, temperature=[0.9, 0.8, 0.7])  # one per round: no warning


# ---- the command line and the model keys, refused before anything is loaded
def test_recipe_file_that_does_not_exist(tmp_path, capsys):
    refused(["--config", str(tmp_path / "nope.yaml")], capsys, "`--config`", "does not exist")


def test_recipe_file_that_is_not_yaml(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("model_name_or_path: x\nnum_rounds: [1, 2\n")
    refused(["--config", str(bad)], capsys, "`--config`", "is not valid YAML (line 3)")


def test_recipe_file_without_keys(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("just some words\n")
    refused(["--config", str(bad)], capsys, "`--config`", "holds no `key: value` mapping")


def test_model_folder_that_does_not_exist(tmp_path, capsys):
    argv = recipe_args(tmp_path / "no" / "such" / "model", tmp_path / "o")
    refused(argv, capsys, "`model_name_or_path`", "is not a folder on this machine")


def test_dtype_that_does_not_exist(tiny_model, tmp_path, capsys):
    refused(recipe_args(tiny_model, tmp_path / "o", dtype="float33"), capsys, "--dtype", "'float33'", "bfloat16")
    recipe = tmp_path / "r.yaml"  # a recipe's values skip argparse's choices; the model check catches it
    recipe.write_text(f"model_name_or_path: {tiny_model}\ndtype: float33\n")
    refused(["--config", str(recipe), "--output_dir", str(tmp_path / "o")], capsys, "`dtype` 'float33'", "bfloat16")


def test_4bit_without_bitsandbytes(tiny_model, tmp_path, capsys, monkeypatch):
    """What a user without bitsandbytes sees: the module is made to look absent."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    argv = recipe_args(tiny_model, tmp_path / "o", load_in_4bit=True, use_peft=True)
    refused(argv, capsys, "`load_in_4bit` needs bitsandbytes", "pip install bitsandbytes")


def test_4bit_under_deepspeed_zero3_init(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true")  # what `accelerate launch` sets for zero3.yaml
    argv = recipe_args(tiny_model, tmp_path / "o", load_in_4bit=True, use_peft=True)
    refused(argv, capsys, "`load_in_4bit` cannot load under DeepSpeed ZeRO-3 init", "accelerate_configs/fsdp2.yaml")


def test_4bit_without_lora(tiny_model, tmp_path, capsys):
    refused(recipe_args(tiny_model, tmp_path / "o", load_in_8bit=True), capsys, "`load_in_8bit`", "`use_peft: true`")


# ---- data, models and outputs, refused during setup before anything is written
def test_more_prompts_per_round_than_the_dataset_has(tiny_model, tmp_path, capsys):
    argv = recipe_args(tiny_model, tmp_path / "o", prompts_per_round=50)  # 6 prompts
    refused(argv, capsys, "`prompts_per_round` (50) is more than the 6 prompts")


def test_eval_split_missing_from_a_dataset_folder(tiny_model, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "test"):
        write_jsonl(folder / f"{split}.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}])
    argv = recipe_args(
        tiny_model, tmp_path / "o", dataset_name=str(folder), dataset_test_split="validation", selection_top_k=1
    )
    refused(argv, capsys, "`dataset_test_split` 'validation' is not a split of")


def test_eval_split_missing_from_the_builtin_task(tiny_model, tmp_path, capsys):
    argv = recipe_args(tiny_model, tmp_path / "o", dataset_test_split="validation")
    refused(argv, capsys, "`dataset_test_split` 'validation': builtin:arithmetic has splits ['phrasings', 'stories',")


def test_out_of_distribution_splits_of_a_dataset_that_has_none(tiny_model, tmp_path, capsys, prompts_file):
    argv = recipe_args(
        tiny_model,
        tmp_path / "o",
        dataset_name=str(prompts_file),
        eval_dataset_name=str(prompts_file),
        eval_splits=["heldout", "phrasings"],
        selection_top_k=1,
    )
    refused(argv, capsys, "`eval_splits` 'phrasings': only the built-in tasks", "`eval_splits: [heldout]`")


def test_more_out_of_distribution_questions_than_the_task_has(tiny_model, tmp_path, capsys):
    argv = recipe_args(tiny_model, tmp_path / "o", task_num_train=390, task_num_eval_ood=20)  # 400 pairs in all
    refused(argv, capsys, "`phrasings` split has only 10 pairs outside the training questions", "`task_num_eval_ood`")


def test_dataset_file_with_no_rows(tiny_model, tmp_path, capsys):
    empty = tmp_path / "d.jsonl"
    empty.write_text("")
    argv = recipe_args(tiny_model, tmp_path / "o", dataset_name=str(empty), dataset_test_split=None, selection_top_k=1)
    refused(argv, capsys, "`dataset_name`", "is empty")


def test_dataset_file_of_an_unknown_format(tiny_model, tmp_path, capsys):
    text = tmp_path / "prompts.txt"
    text.write_text("What is 1 + 1?\n")
    argv = recipe_args(tiny_model, tmp_path / "o", dataset_name=str(text), dataset_test_split=None, selection_top_k=1)
    refused(argv, capsys, "`dataset_name`", ".txt extension", ".jsonl")


def test_reward_model_folder_without_weights(tiny_model, tmp_path, capsys):
    import shutil

    folder = tmp_path / "rm"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model / name, folder / name)
    argv = recipe_args(tiny_model, tmp_path / "o", reward_funcs=[f"reward_model:{folder}"])
    refused(argv, capsys, "`reward_funcs`", f"reward_model:{folder}", "holds no weights")


def test_reward_model_folder_that_does_not_exist(tiny_model, tmp_path, capsys):
    missing = tmp_path / "outputs" / "smollm2-reward-model" / "model"
    argv = recipe_args(tiny_model, tmp_path / "o", reward_funcs=[f"reward_model:{missing}"])
    refused(argv, capsys, "`reward_funcs`", f"reward_model:{missing}", "does not exist", "check the path")


def test_model_folder_without_a_model(tmp_path, capsys):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    refused(recipe_args(folder, tmp_path / "o"), capsys, "`model_name_or_path`", "holds no config.json")


def test_lora_target_modules_that_match_nothing(tiny_model, tmp_path, capsys):
    argv = recipe_args(tiny_model, tmp_path / "o", use_peft=True, lora_target_modules=["query_key_value"])
    refused(argv, capsys, "`lora_target_modules`", "query_key_value", "match no layer", "all-linear")


def test_output_dir_that_is_a_file(tiny_model, tmp_path, capsys):
    target = tmp_path / "o"
    target.write_text("not a folder")
    code = main(recipe_args(tiny_model, target))
    err = capsys.readouterr().err
    assert code == 2 and "`output_dir`" in err and "is a file" in err
    assert target.read_text() == "not a folder"


def test_max_seq_length_that_leaves_no_room(tiny_model, tmp_path, capsys):
    refused(recipe_args(tiny_model, tmp_path / "o", max_length=8), capsys, "`max_length` (8) leaves no room")


def test_scorer_whose_extra_is_not_installed(tiny_model, tmp_path, capsys, monkeypatch):
    """What a user without `rs_trainer[math]` sees: the extra's module is made to look absent."""
    from rs_trainer import rewards

    monkeypatch.setitem(rewards.BUILTIN_NEEDS, "math_answer", ("rs_trainer_no_such_module", "'rs_trainer[math]'"))
    argv = recipe_args(tiny_model, tmp_path / "o", reward_funcs=["math_answer"])
    refused(argv, capsys, "`reward_funcs`", "`math_answer` needs the package", "pip install 'rs_trainer[math]'")


def test_math_answer_resolves_when_its_extra_is_installed():
    from rs_trainer.rewards import resolve_scorer

    assert resolve_scorer("math_answer").__name__ == "math_answer"


def test_make_demo_with_an_accelerate_config_that_does_not_exist(tmp_path):
    proc = run_group(["make", "-s", "demo", f"ACCELERATE_CONFIG={tmp_path / 'nope.yaml'}"], timeout=120, cwd=REPO)
    assert proc.returncode != 0
    assert "ACCELERATE_CONFIG" in proc.stderr and "accelerate_configs/" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
