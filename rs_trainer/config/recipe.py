"""`RSConfig`: a recipe's keys (the groups in run_keys.py, sampling_keys.py and training_keys.py) and the checks
that run when it is built. First every key alone, in one loop over the fields (`checks.check_value`: type, range,
choices, as each field's metadata declares them); then the checks across keys (`validate`)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import typing
import warnings
from dataclasses import dataclass

from rs_trainer.config.checks import check_value
from rs_trainer.config.run_keys import DataKeys, RunKeys
from rs_trainer.config.sampling_keys import GenerationKeys, ScoringKeys, TrlVllmKeys
from rs_trainer.config.training_keys import (
    DriftKeys,
    ProcessKeys,
    RationalizationKeys,
    SavingKeys,
    SelectionKeys,
    SFTKeys,
)
from rs_trainer.errors import ConfigError
from rs_trainer.generators.spec import GeneratorSpec, parse_generators
from rs_trainer.phases.selection import RULES
from rs_trainer.phases.temperature import AUTO
from rs_trainer.run.data import builtin_task, is_local_file
from rs_trainer.run.metrics import HELDOUT

# The key groups in the order a recipe's keys are listed (`dataclasses.fields`, `to_dict`, docs/options.md):
# a dataclass takes its bases' fields from the last base to the first.
GROUPS = (
    RunKeys,
    DataKeys,
    GenerationKeys,
    TrlVllmKeys,
    ScoringKeys,
    SelectionKeys,
    RationalizationKeys,
    DriftKeys,
    SFTKeys,
    SavingKeys,
    ProcessKeys,
)
# Keys whose entries are scorer names or `kind: judge` mappings (`rs_trainer.rewards.judge`).
SCORER_LIST_KEYS = ("reward_funcs", "eval_reward_funcs")


@dataclass
class RSConfig(*reversed(GROUPS)):
    """Every recipe key of a run (TRL's `ModelConfig` holds the model, dtype and LoRA keys). Each field's help,
    range and choices are in its metadata; docs/options.md lists them all (`python -m rs_trainer.config.reference`)."""

    def __post_init__(self):
        if any(isinstance(g, list) for g in self.generators):  # `--generators '[{...}, {...}]'`: one list
            self.generators = [e for g in self.generators for e in (g if isinstance(g, list) else [g])]
        self._check_each_key()
        self.validate()

    def _check_each_key(self):
        """The first check, every key alone, so that no later check meets a list where a number belongs: its type,
        and its range or choices as its field's metadata declares (`checks.check_value`). A per-round key's single
        value becomes a one-value list, a name list's single name a one-name list, and a boolean that YAML made of
        `on`/`off` what it means there."""
        hints = typing.get_type_hints(type(self))
        per_round = per_round_keys()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "generators":  # generators: checked entry by entry in `generator_specs`
                continue
            if f.name in SCORER_LIST_KEYS:  # names, or `kind: judge` mappings: checked entry by entry
                setattr(self, f.name, self._scorer_entries(f.name, value))
            elif f.name == "temperature":  # a number or `auto`, per round
                setattr(self, f.name, self._temperatures(value))
            else:
                setattr(self, f.name, check_value(f.name, value, hints[f.name], f.metadata, per_round))

    @staticmethod
    def _scorer_entries(key: str, value) -> list:
        """`reward_funcs` / `eval_reward_funcs`: each entry a scorer's name or a `kind: judge` mapping
        or a `prm:` scorer (`rewards.parse_scorer_entry`), the names unique."""
        from rs_trainer.rewards import parse_scorer_entry, scorer_name

        entries = [value] if isinstance(value, (str, dict)) else value
        if not isinstance(entries, (list, tuple)) or not entries:
            raise ConfigError(f"`{key}` takes scorer names or `kind: judge` mappings (a list), got {value!r}.")
        for i, entry in enumerate(entries):
            if not isinstance(entry, (str, dict)) or not entry:
                raise ConfigError(f"`{key}[{i}]` is {entry!r}; give a scorer's name or a `kind: judge` mapping.")
            parse_scorer_entry(entry, f"`{key}[{i}]`")
        names = [scorer_name(e) for e in entries]
        if len(set(names)) != len(names):
            raise ConfigError(f"`{key}` names a scorer twice ({names}); give each a different name.")
        return list(entries)

    @staticmethod
    def _temperatures(value) -> list:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ConfigError("`temperature` is an empty list; give one value or one per round.")
        temperatures = []
        for r, t in enumerate(values):
            if isinstance(t, str) and t.strip().lower() == AUTO:
                temperatures.append(AUTO)
                continue
            try:
                if isinstance(t, bool) or float(t) != float(t):  # YAML's `off` (False), or `.nan`
                    raise ValueError
                t = float(t)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"`temperature` for round {r} is {t!r}; give a number or `auto` (chosen each round by a probe)."
                ) from None
            if t < 0:
                raise ConfigError(f"`temperature` for round {r} is negative ({t}); 0 is greedy.")
            temperatures.append(t)
        return temperatures

    def validate(self):
        """Checks across keys that need no model or data (each key alone is checked first, in `_check_each_key`);
        those that need M (prompt count) are in `check_selection_size`."""
        self._validate_refresh()
        self._validate_trl_vllm_keys()
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("`push_to_hub` needs `hub_model_id`, the repository to upload to (org/name).")
        if self.push_to_hub and not self.save_checkpoints:
            raise ConfigError("`push_to_hub` uploads the last round's checkpoint; set `save_checkpoints: true`.")
        self._validate_selection_keys()
        if any(b < a for a, b in itertools.pairwise(self.reward_percentile)):
            raise ConfigError(f"`reward_percentile` must not fall from round to round, got {self.reward_percentile}.")
        self._check_dataset_files()
        self._validate_eval_splits()
        if self.max_kl is not None and self.kl_to_base == "off":
            raise ConfigError("`max_kl` needs KL measured: set `kl_to_base` auto or on, or leave `max_kl` unset.")
        if AUTO in self.temperature and not self.temperature_grid:
            raise ConfigError("`temperature_grid` must list temperatures above 0 for `temperature: auto`, got [].")
        for r, t in enumerate(self.temperature):
            if t == 0 and self.num_generations > 1:
                raise ConfigError(
                    f"`temperature` 0 (greedy) in round {r} with `num_generations` "
                    f"{self.num_generations} would give N identical completions; raise the temperature "
                    "or set `num_generations: 1`."
                )
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(
                f"`reward_weights` has {len(self.reward_weights)} values for {len(self.reward_funcs)} "
                "`reward_funcs`; give one weight per scorer."
            )
        self.generator_specs()  # refuses a bad `generators` entry by name
        self._validate_optimisation()
        self._warn_unused_round_values()

    def _validate_refresh(self):
        if self.reward_model_refresh is None:
            if self.reward_model_refresh_pairs is not None:
                raise ConfigError(
                    "`reward_model_refresh_pairs` is set but `reward_model_refresh` is not; name a reward-model "
                    "recipe (recipes/smollm2/reward_model.yaml) or remove `reward_model_refresh_pairs`."
                )
            return
        models = [f for f in self.reward_funcs if isinstance(f, str) and f.startswith("reward_model:")]
        if len(models) != 1:
            raise ConfigError(
                f"`reward_model_refresh` replaces the one `reward_model:` scorer of `reward_funcs`, which has "
                f"{len(models)}; name exactly one, or remove `reward_model_refresh`."
            )
        same = [json.dumps(f, sort_keys=True) for f in self.eval_reward_funcs or []]
        if not same or sorted(same) == sorted(json.dumps(f, sort_keys=True) for f in self.reward_funcs):
            raise ConfigError(
                "`reward_model_refresh` ranks each round's samples with `eval_reward_funcs` (the verifier stands in "
                "for the labellers), which is not set apart from `reward_funcs`; set it (e.g. [numeric_answer])."
            )
        if not os.path.isfile(self.reward_model_refresh):
            raise ConfigError(
                f"`reward_model_refresh` {self.reward_model_refresh} does not exist; name a reward-model recipe, "
                "e.g. recipes/smollm2/reward_model.yaml."
            )

    def _validate_selection_keys(self):
        """The rule's own keys set (`Rule.needs`), and no key that only other rules read (`Rule.reads`): a key set
        under a rule that ignores it is a mistake the run would hide."""
        rule = RULES[self.selection]
        for key, means in rule.needs.items():
            if getattr(self, key) is None:
                raise ConfigError(f"`selection: {self.selection}` needs `{key}` ({means}).")
        defaults = RSConfig.defaults()
        for key, rules in selection_keys().items():
            if getattr(self, key) != defaults[key] and self.selection not in rules:
                raise ConfigError(
                    f"`{key}` is set but `selection` is {self.selection!r}, which ignores it; it applies to "
                    f"`selection: {' or '.join(rules)}`. Remove `{key}` or change `selection`."
                )

    def _check_dataset_files(self):
        for key in ("dataset_name", "eval_dataset_name"):
            name = getattr(self, key)
            if name is not None and is_local_file(name) and not os.path.exists(name):
                raise ConfigError(
                    f"`{key}` {name} does not exist; check the path (a relative path starts from the folder the run "
                    "is launched in)."
                )
        if self.dataset_test_split is not None and self.eval_dataset_name is None and is_local_file(self.dataset_name):
            raise ConfigError(
                f"`dataset_name` {self.dataset_name} is one file, so `dataset_test_split` {self.dataset_test_split!r} "
                "would evaluate on the training prompts; set `eval_dataset_name` to a held-out file, or "
                "`dataset_test_split: null`."
            )

    def _validate_eval_splits(self):
        """Each name of `eval_splits` once, each one the built-in task has (only `heldout` for other datasets),
        none the split trained on, and `heldout` only when there are held-out prompts."""
        task = builtin_task(self.dataset_name)
        if task is not None and self.dataset_train_split in self.evaluation_splits():
            raise ConfigError(
                f"`eval_splits` {self.evaluation_splits()} holds {self.dataset_train_split!r}, the "
                "`dataset_train_split`: it would evaluate on the training prompts; list `eval_splits` without it."
            )
        if self.eval_splits is None:
            return
        known = [HELDOUT, *getattr(task, "EVAL_SPLITS", ())]
        for name in self.eval_splits:
            if self.eval_splits.count(name) > 1:
                raise ConfigError(f"`eval_splits` names {name!r} twice; list each split once.")
            if name not in known and task is None:
                raise ConfigError(
                    f"`eval_splits` {name!r}: only the built-in tasks (builtin:arithmetic) have evaluation splits "
                    f"beside `heldout`; {self.dataset_name} is evaluated on `heldout` alone: `eval_splits: [heldout]`."
                )
            if name not in known:
                raise ConfigError(
                    f"`eval_splits` {name!r} is not an evaluation split of {self.dataset_name}; choose from "
                    f"{', '.join(known)}."
                )
        if HELDOUT in self.eval_splits and self.dataset_test_split is None:
            raise ConfigError(
                "`eval_splits` names heldout but `dataset_test_split` is null (held-out evaluation off); name a "
                "`dataset_test_split`, or leave heldout out of `eval_splits`."
            )

    def evaluation_splits(self) -> list[str]:
        """The evaluation sets, in order: `eval_splits`, or by default `heldout` and the built-in task's
        `DEFAULT_EVAL_SPLITS`, none when `dataset_test_split` is null."""
        if self.eval_splits is not None:
            return list(self.eval_splits)
        if self.dataset_test_split is None:
            return []
        return [HELDOUT, *getattr(builtin_task(self.dataset_name), "DEFAULT_EVAL_SPLITS", ())]

    def _validate_optimisation(self):
        """The two keys whose choices belong to an installed package: transformers' schedulers, Accelerate's
        trackers (and the tracker's package installed)."""
        import accelerate.utils
        from accelerate.utils import LoggerType
        from transformers import SchedulerType

        names = [t.value for t in SchedulerType]
        if self.lr_scheduler_type not in names:
            raise ConfigError(f"`lr_scheduler_type` {self.lr_scheduler_type!r} is unknown; choose one of {names}.")
        known = sorted({t.value for t in LoggerType} | {"none", "all"})
        unknown = [n for n in self.report_to if n.lower() not in known]
        if unknown:
            raise ConfigError(f"`report_to` {unknown} unknown; choose from {known}.")
        for name in self.report_to:
            available = getattr(accelerate.utils, f"is_{name.lower()}_available", None)
            if available is not None and not available():
                raise ConfigError(
                    f"`report_to` {name} needs its package: `pip install {name}`, or choose `report_to: tensorboard`."
                )

    def _warn_unused_round_values(self):
        for name in per_round_keys():
            values = getattr(self, name)
            if len(values) > self.num_rounds:
                warnings.warn(
                    f"`{name}` has {len(values)} values for {self.num_rounds} round(s): {values[self.num_rounds :]} "
                    f"wait for rounds {self.num_rounds}..{len(values) - 1}, run when this output_dir is resumed "
                    "with a larger `num_rounds`.",
                    stacklevel=3,
                )

    def generator_specs(self) -> list[GeneratorSpec]:
        """The `generators` as checked `GeneratorSpec`s (the policy in-process when none is listed)."""
        return parse_generators(self.generators, self.num_generations)

    def samples_per_prompt(self) -> int:
        """N: the samples each prompt gets in a round, over all generators."""
        return sum(spec.num_generations for spec in self.generator_specs())

    def check_selection_size(self, num_prompts: int):
        """Refuse a `selection_top_k` larger than what a round generates (M x N)."""
        n = self.samples_per_prompt()
        total = num_prompts * n
        if self.selection == "top_k" and self.selection_top_k > total:
            raise ConfigError(
                f"`selection_top_k` ({self.selection_top_k}) is larger than prompts x samples ({num_prompts} x "
                f"{n} = {total}); lower `selection_top_k` or raise `num_generations`."
            )

    def for_round(self, name: str, round_index: int):
        """The value of a per-round field in round `round_index` (0-based); the last value repeats."""
        values = getattr(self, name)
        return values[min(round_index, len(values) - 1)]

    def top_k_count(self, total: int) -> int | None:
        if self.selection == "top_k":
            return self.selection_top_k
        if self.selection == "top_fraction":
            return max(1, math.ceil(self.top_fraction * total))
        return None

    def trackers(self) -> list[str] | str | None:
        """`report_to` as Accelerate's `log_with`."""
        names = [n for n in self.report_to if n.lower() != "none"]
        if not names:
            return None
        return "all" if "all" in names else names

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def defaults() -> dict:
        """Every key's default value."""
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(RSConfig)
        }


def keys_with(fact: str, value=True) -> tuple[str, ...]:
    """The keys whose field declares `fact` (`checks.key`) with `value`, in recipe order.

    >>> keys_with("per_round")
    ('temperature', 'top_p', 'top_k', 'min_p', 'max_completion_length', 'reward_percentile', 'rso_beta')
    """
    return tuple(f.name for f in dataclasses.fields(RSConfig) if f.metadata.get(fact) == value)


def per_round_keys() -> tuple[str, ...]:
    """The keys that take one value per round (the last repeating)."""
    return keys_with("per_round")


def selection_keys() -> dict[str, tuple[str, ...]]:
    """Each key that only some selection rules read -> those rules (`Rule.reads` in `phases.selection.RULES`)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, rule in RULES.items():
        for key in rule.reads:
            out[key] = (*out.get(key, ()), name)
    return out
