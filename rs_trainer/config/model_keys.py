"""TRL's `ModelConfig` keys that rs_trainer checks itself: the LoRA numbers, and LoRA keys set with LoRA off."""

from __future__ import annotations

import dataclasses

from rs_trainer.config.checks import Range, as_number, check_range
from rs_trainer.errors import ConfigError

# TRL's `ModelConfig` keys that are numbers, checked (with `use_peft`) as RSConfig's are: (type, range).
MODEL_KEY_RANGES = {
    "lora_r": (int, Range(1, note=" (the adapter's rank)", fix="; 8 to 64 is usual")),
    "lora_alpha": (int, Range(0, open_low=True, note=" (the adapter's scale is lora_alpha / lora_r)")),
    "lora_dropout": (float, Range(0, 1, open_high=True)),
}


def check_model_numbers(model_args) -> None:
    """The LoRA numbers of TRL's `ModelConfig` (when `use_peft`), refused by name before peft raises on them."""
    if not model_args.use_peft:
        return
    for key, (kind, allowed) in MODEL_KEY_RANGES.items():
        number = as_number(key, getattr(model_args, key), kind)
        check_range(key, number, allowed)
        setattr(model_args, key, number)


def changed_lora_keys(model_args) -> list[str]:
    """LoRA keys set away from TRL's defaults."""
    from trl import ModelConfig

    defaults = ModelConfig()
    return [
        f.name
        for f in dataclasses.fields(model_args)
        if f.name.startswith("lora_") and getattr(model_args, f.name) != getattr(defaults, f.name)
    ]


def check_peft_keys(model_args, recipe_keys: set[str] = frozenset(), cli_keys: set[str] = frozenset()):
    """Refuse LoRA keys with `use_peft` false: the user expects LoRA. One exception keeps "LoRA on or off with one
    key": a recipe's LoRA keys are ignored when `--use_peft false` is given on the command line."""
    if model_args.use_peft:
        return
    changed = changed_lora_keys(model_args)
    flipped_on_cli = "use_peft" in cli_keys and not any(k in cli_keys for k in changed)
    if changed and not flipped_on_cli:
        raise ConfigError(f"LoRA keys {changed} are set but `use_peft` is false; set `use_peft: true` or remove them.")
