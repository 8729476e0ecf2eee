"""Recipes. A YAML recipe and command-line overrides are parsed by `trl.TrlParser` into `RSConfig` and TRL's own
`ModelConfig` (model, dtype and LoRA keys).

- recipe.py: `RSConfig` and its checks across keys;
- run_keys.py, sampling_keys.py, training_keys.py: the keys, a dataclass per group, each field's facts (help, range,
  choices, per round, resumable) in its metadata;
- checks.py: those facts (`key`) and the one check of a value against them (`check_value`);
- resume.py: which keys a resumed run may change; model_keys.py: the checks of TRL's `ModelConfig` keys;
- reference.py: docs/options.md's list of every key, written from the fields (a test keeps the two equal).

Fields marked *per round* take one value or a list with one value per round; the last value repeats when there are
more rounds than values.
"""

from rs_trainer.config.checks import Range
from rs_trainer.config.model_keys import check_model_args, check_model_numbers, check_peft_keys
from rs_trainer.config.recipe import RSConfig, keys_with, per_round_keys, selection_keys
from rs_trainer.config.resume import NON_SEMANTIC_KEYS, RESUMABLE_KEYS, config_changes, resume_blockers, run_config

__all__ = [
    "NON_SEMANTIC_KEYS",
    "RESUMABLE_KEYS",
    "RSConfig",
    "Range",
    "check_model_args",
    "check_model_numbers",
    "check_peft_keys",
    "config_changes",
    "keys_with",
    "per_round_keys",
    "resume_blockers",
    "run_config",
    "selection_keys",
]
