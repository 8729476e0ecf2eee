"""TRL's `ModelConfig` keys that rs_trainer checks itself before anything is loaded: the model's name, dtype and
quantisation (`check_model_args`), the LoRA numbers, and LoRA keys set with LoRA off."""

from __future__ import annotations

import dataclasses
import os
import re

from rs_trainer.config.checks import Range, as_number, check_range
from rs_trainer.errors import ConfigError, first_line

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


def check_model_args(model_args) -> None:
    """Model keys that can be checked before anything is loaded."""
    from rs_trainer.run.models import EMBEDDED_PREFIX, torch_dtype

    name = model_args.model_name_or_path
    if name is None:
        raise ConfigError("`model_name_or_path` is not set; name a hub id, a local folder or `embedded:<name>`.")
    if not name.startswith(EMBEDDED_PREFIX) and not os.path.isdir(name) and not looks_like_hub_id(name):
        raise ConfigError(
            f"`model_name_or_path` {name} is not a folder on this machine (nor a hub id `org/name`); check the path."
        )
    check_model_numbers(model_args)
    try:
        torch_dtype(model_args.dtype)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if model_args.load_in_4bit or model_args.load_in_8bit:
        check_quantization(model_args)


def check_quantization(model_args) -> None:
    """bitsandbytes must import (0.50 runs on the CPU as well as on GPUs), and the launch must allow the device
    map that places a quantised model."""
    key = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "").lower() in ("1", "true"):
        raise ConfigError(
            f"`{key}` cannot load under DeepSpeed ZeRO-3 init (`zero3_init_flag: true`): transformers refuses the "
            "device map a quantised model is placed with there; for QLoRA on several GPUs launch with "
            f"`--config_file accelerate_configs/fsdp2.yaml`, or drop `{key}`."
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # not installed, or a build that does not load on this machine
        raise ConfigError(
            f"`{key}` needs bitsandbytes, which does not import here ({first_line(err)}); "
            f"`pip install bitsandbytes`, or set `{key}: false`."
        ) from None


def looks_like_hub_id(name: str) -> bool:
    """`name` or `org/name` with the characters the Hub allows; paths such as `./x`, `/x` or `a/b/c` are not."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None and not name.startswith((".", "-"))
