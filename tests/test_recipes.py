"""Every recipe and accelerate config in the repository parses (folders walked recursively), and every recipe for a
real model (a hub id, not `embedded:`) dry-runs in-process, on a local stand-in for its dataset: the Hub is offline
in tests, and a dry run loads the training prompts but no model."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import PUBLISHED_PARAMETERS, REPO, model_config_folder, write_jsonl

from rs_trainer.cli import main, parse_args
from rs_trainer.config import RSConfig

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
ACCELERATE_CONFIGS = sorted((REPO / "accelerate_configs").rglob("*.yaml"))


def load_recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def is_reward_training(raw: dict) -> bool:
    return "generations_from" in raw  # trains a reward model (rs_trainer.tools.reward_training), no rounds


REAL_MODEL_RECIPES = [
    r
    for r in RECIPES
    if not is_reward_training(load_recipe(r)) and not load_recipe(r)["model_name_or_path"].startswith("embedded:")
]

# One row of each real-model recipe's dataset, with that dataset's own columns: the dry run reads a local JSONL copy.
# A recipe on another dataset needs its row here.
DATASET_ROWS = {
    "openai/gsm8k": {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
        "altogether in April and May.\n#### 72",
    },
    "HuggingFaceH4/ultrafeedback_binarized": {
        "prompt": "Write a haiku about the sea.",
        "prompt_id": "3f1c0e",
        "chosen": [{"role": "user", "content": "Write a haiku about the sea."}, {"role": "assistant", "content": "-"}],
        "rejected": [
            {"role": "user", "content": "Write a haiku about the sea."},
            {"role": "assistant", "content": ""},
        ],
        "messages": [{"role": "user", "content": "Write a haiku about the sea."}],
        "score_chosen": 8.0,
        "score_rejected": 4.0,
    },
    "AI-MO/NuminaMath-TIR": {
        "problem": "What is the sum of the roots of $x^2 - 5x + 6 = 0$?",
        "solution": "By Vieta's formulas the sum of the roots is $5$, so the answer is $\\boxed{5}$.",
        "messages": [{"role": "user", "content": "What is the sum of the roots of $x^2 - 5x + 6 = 0$?"}],
    },
}


def known_keys() -> set[str]:
    from trl import ModelConfig

    return {f.name for f in dataclasses.fields(RSConfig)} | {f.name for f in dataclasses.fields(ModelConfig)}


def header(path: Path) -> str:
    """The text of the comment lines at the top of a recipe, as one line."""
    lines = path.read_text().splitlines()
    comments = lines[: next(i for i, s in enumerate(lines) if not s.startswith("#"))]
    return " ".join(" ".join(line.lstrip("#").split()) for line in comments)


def test_there_are_recipes_and_configs():
    assert RECIPES and ACCELERATE_CONFIGS and REAL_MODEL_RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_parses(recipe: Path, tmp_path):
    argv = ["--config", str(recipe), "--output_dir", str(tmp_path)]
    raw = load_recipe(recipe)
    if is_reward_training(raw):
        from rs_trainer.cli import parse_reward_training_args as parse_reward_args

        data_args, training_args, model_args = parse_reward_args(argv)
        assert data_args.generations_from and training_args.output_dir == str(tmp_path)
    else:
        args, model_args = parse_args(argv)
        assert args.num_rounds >= 1 and model_args.model_name_or_path
        return
    assert model_args.model_name_or_path


@pytest.mark.parametrize("recipe", REAL_MODEL_RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_real_model_recipe_is_complete(recipe: Path):
    """A real-model recipe loads in bf16, sizes its generation batches by device, and its header names the accelerate
    config and launch command; a multi-process one sets `ddp_timeout`, a multi-node one says `output_dir` must be
    shared."""
    raw, text = load_recipe(recipe), header(recipe)
    assert raw["dtype"] == "bfloat16"
    assert raw["generation_batch_size"] == 0
    configs = set(re.findall(r"accelerate_configs/[\w.-]+\.yaml", text))
    assert configs, f"{recipe}: name its accelerate config in the header comment"
    assert "accelerate launch" in text and str(recipe.relative_to(REPO)) in text
    for name in configs:
        config = yaml.safe_load((REPO / name).read_text())  # a missing file fails here
        if config["num_processes"] > 1:
            assert raw.get("ddp_timeout", 0) >= 3600, f"{recipe}: set `ddp_timeout` for {name}"
        if config["num_machines"] > 1:
            assert re.search(r"`output_dir` must be on storage that every node shares", text), recipe


def stand_in_dataset(raw: dict, path: Path, n: int) -> Path:
    """`n` rows of the recipe's dataset with distinct prompts and ids, as a local JSONL file."""
    row = DATASET_ROWS.get(raw["dataset_name"])
    assert row, f"add a row of {raw['dataset_name']} to DATASET_ROWS"
    prompt_column, id_column = raw.get("prompt_column", "prompt"), raw.get("id_column", "prompt_id")
    assert prompt_column in row, f"{raw['dataset_name']} has no column `{prompt_column}`"
    rows = []
    for i in range(n):
        copy = {**row, prompt_column: f"{row[prompt_column]} ({i})"}
        if id_column in row:
            copy[id_column] = f"{row[id_column]}-{i}"
        rows.append(copy)
    return write_jsonl(path, rows)


def as_list(value):
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("recipe", REAL_MODEL_RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_real_model_recipe_dry_runs(recipe: Path, tmp_path, capsys):
    """`--dry_run` with everything from the recipe but the dataset (a local stand-in), `output_dir` and the model (a
    folder with its published config.json): every recipe value reaches the resolved config, the plan counts the
    round's generations, and it estimates the memory of one GPU from the model's config."""
    raw = load_recipe(recipe)
    num_train = 12
    overrides = {
        "model_name_or_path": str(model_config_folder(raw["model_name_or_path"], tmp_path / "model")),
        "dataset_name": str(stand_in_dataset(raw, tmp_path / "train.jsonl", num_train)),
        "eval_dataset_name": str(stand_in_dataset(raw, tmp_path / "eval.jsonl", 3)),
        "output_dir": str(tmp_path / "out"),
    }
    argv = ["--config", str(recipe), *[a for k, v in overrides.items() for a in (f"--{k}", v)], "--dry_run", "true"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    plan = json.loads(out)
    resolved = {**plan["config"]["model"], **plan["config"]["rs"]}
    for key, value in raw.items():
        if key not in overrides:
            assert as_list(resolved[key]) == as_list(value), f"{key}: {resolved[key]!r} != recipe's {value!r}"
    prompts = min(raw.get("prompts_per_round") or num_train, num_train)
    assert plan["train_prompts"] == num_train and plan["prompts_per_round"] == prompts
    samples = RSConfig(
        num_generations=raw["num_generations"], generators=raw.get("generators", [])
    ).samples_per_prompt()
    assert plan["generations_per_round"] == prompts * samples
    memory = plan["memory_per_gpu"]
    assert memory["parameters"] == PUBLISHED_PARAMETERS[raw["model_name_or_path"]]
    assert 0 < memory["training_gib"] and memory["sampling_weights_gib"] > 0
    assert (
        plan["max_completion_tokens_per_round"]
        == [plan["generations_per_round"] * as_list(raw["max_completion_length"])[-1]] * raw["num_rounds"]
    )


def test_a_misspelled_key_fails_the_dry_run(tmp_path, capsys):
    """The recipe tests can fail: one misspelled key in a real-model recipe stops the dry run, naming it."""
    recipe = next(r for r in REAL_MODEL_RECIPES if not set(load_recipe(r)) - known_keys())
    broken = tmp_path / "broken.yaml"
    broken.write_text(recipe.read_text().replace("num_generations:", "num_generation:"))
    data = stand_in_dataset(load_recipe(recipe), tmp_path / "train.jsonl", 4)
    argv = [
        "--config",
        str(broken),
        "--dataset_name",
        str(data),
        "--eval_dataset_name",
        str(data),
        "--dry_run",
        "true",
    ]
    assert main(argv) == 2
    assert "num_generation" in capsys.readouterr().err


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_accelerate_config_parses(config: Path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    loaded = load_config_from_file(str(config))
    raw = yaml.safe_load(config.read_text())
    assert loaded.distributed_type == DistributedType(raw["distributed_type"])
    assert loaded.num_processes >= 1
