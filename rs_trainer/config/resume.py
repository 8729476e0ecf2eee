"""What a run saves of its config (`run_config.json`), and which keys a resumed run may change, read from the
fields' metadata (`semantic`, `resumable`)."""

from __future__ import annotations

import dataclasses
import json

from rs_trainer.config.recipe import RSConfig, keys_with

# Keys that do not change what a run computes: a run may be continued with other values of these.
NON_SEMANTIC_KEYS = frozenset(keys_with("semantic", False))
# Keys a resumed run may change: how many rounds it runs (more rounds continue from the last one; the rounds already
# finished are read back, never recomputed), and how the work is fitted into memory, not what is computed. A run
# stopped by an out-of-memory error resumes with a smaller batch or token budget.
RESUMABLE_KEYS = frozenset(keys_with("resumable"))
# SFT's micro-batch and accumulation may trade against each other: the same sequences per optimizer step.
TRAIN_BATCH_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps")


def run_config(args, model_args) -> dict:
    """`run_config.json`: the recipe's keys that change what a run computes (`rs`) and TRL's model keys (`model`),
    as JSON reads them back."""
    rs = {k: v for k, v in args.to_dict().items() if k not in NON_SEMANTIC_KEYS}
    return json.loads(json.dumps({"rs": rs, "model": dataclasses.asdict(model_args)}, default=str))


def resume_blockers(saved: dict, now: dict) -> list[str]:
    """The keys (`rs.<key>`, `model.<key>`) whose change stops a run saved as `saved` (`run_config`) from resuming
    as `now`: every changed model key, and of the recipe's changed keys (`config_changes`) all but `RESUMABLE_KEYS`
    and the SFT batch keys when their product, the sequences per optimizer step on each process, is the same.

    >>> resume_blockers({"rs": {"num_rounds": 1, "seed": 1}}, {"rs": {"num_rounds": 3, "seed": 2}})
    ['rs.seed']
    >>> old = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}
    >>> resume_blockers({"rs": old}, {"rs": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}})
    []
    >>> resume_blockers({"rs": old, "model": {"lora_r": 8}}, {"rs": {**old, "per_device_train_batch_size": 4}})
    ['rs.per_device_train_batch_size', 'model.lora_r']
    """
    old, new = saved.get("rs", {}), now.get("rs", {})
    changed = [k for k in config_changes(old, new) if k not in RESUMABLE_KEYS]
    defaults = RSConfig.defaults()

    def sequences_per_step(config: dict) -> int:
        a, b = (config.get(k, defaults[k]) for k in TRAIN_BATCH_KEYS)
        return a * b

    if sequences_per_step(old) == sequences_per_step(new):
        changed = [k for k in changed if k not in TRAIN_BATCH_KEYS]
    old_model, new_model = saved.get("model", {}), now.get("model", {})
    model = sorted(k for k in set(old_model) | set(new_model) if old_model.get(k) != new_model.get(k))
    return [f"rs.{k}" for k in changed] + [f"model.{k}" for k in model]


def config_changes(old: dict, new: dict) -> list[str]:
    """The semantic keys whose values differ between a saved run config (`rs` section) and this one. A key the saved
    config lacks (added in a later version) counts only when this run sets it away from its default, so an upgrade
    alone never blocks a resume.

    >>> config_changes({"seed": 1, "output_dir": "a"}, {"seed": 2, "output_dir": "b"})
    ['seed']
    """
    old = {k: v for k, v in old.items() if k not in NON_SEMANTIC_KEYS}
    new = {k: v for k, v in new.items() if k not in NON_SEMANTIC_KEYS}
    defaults = json.loads(json.dumps(RSConfig.defaults(), default=str))
    return [key for key in sorted(set(old) | set(new)) if old.get(key, defaults.get(key)) != new.get(key)]
