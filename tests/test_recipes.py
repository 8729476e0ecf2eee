"""Every recipe and accelerate config in the repository parses (folders walked recursively)."""

from pathlib import Path

import pytest
import yaml
from helpers import REPO

from rs_trainer.cli import parse_args

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
ACCELERATE_CONFIGS = sorted((REPO / "accelerate_configs").rglob("*.yaml"))


def test_there_are_recipes_and_configs():
    assert RECIPES and ACCELERATE_CONFIGS


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_parses(recipe: Path, tmp_path):
    argv = ["--config", str(recipe), "--output_dir", str(tmp_path)]
    if "generations_from" in yaml.safe_load(recipe.read_text()):  # a reward-model training recipe
        from rs_trainer.cli import parse_reward_training_args as parse_reward_args

        data_args, training_args, model_args = parse_reward_args(argv)
        assert data_args.generations_from and training_args.output_dir == str(tmp_path)
    else:
        args, model_args = parse_args(argv)
        assert args.num_rounds >= 1
    assert model_args.model_name_or_path


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_accelerate_config_parses(config: Path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    loaded = load_config_from_file(str(config))
    raw = yaml.safe_load(config.read_text())
    assert loaded.distributed_type == DistributedType(raw["distributed_type"])
    assert loaded.num_processes >= 1
