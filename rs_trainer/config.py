"""Recipe dataclasses. A YAML recipe and command-line overrides are parsed by `trl.TrlParser` into
`RSConfig` (this file) and TRL's own `ModelConfig` (model, dtype and LoRA keys).

Every field is documented once, in its `help`. Fields marked *per round* take one value or a list with one value
per round; the last value repeats when there are more rounds than values.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import types
import typing
import warnings
from dataclasses import dataclass, field

from rs_trainer.errors import ConfigError
from rs_trainer.generators.spec import GeneratorSpec, parse_generators
from rs_trainer.phases.filters import DEDUPE_MODES
from rs_trainer.phases.temperature import AUTO
from rs_trainer.run.data import builtin_task, is_local_file
from rs_trainer.run.metrics import HELDOUT
from rs_trainer.tasks import arithmetic

SELECTION_STRATEGIES = ("best_of_n", "top_k_per_prompt", "threshold", "percentile", "top_k", "top_fraction", "rso")
UNSET = "<unset>"  # a deprecated key whose `null` means something (`eval_split: null`): given or not
PER_ROUND_FIELDS = ("temperature", "top_p", "top_k", "min_p", "max_completion_length")
# Keys that take one value per round as well, but that `for_round` does not read (selection reads them).
LIST_VALUED_FIELDS = (*PER_ROUND_FIELDS, "reward_percentile", "rso_beta")
# Keys whose entries are scorer names or `kind: judge` mappings (`rs_trainer.rewards.judge`).
SCORER_LIST_KEYS = ("reward_funcs", "eval_reward_funcs")
# The names of TRL's configs where a key means what a TRL key means; the old spelling is a deprecated alias for one
# release. The "k"s, once: `top_k` is sampling's top-k (TRL, transformers); `selection: top_k` keeps the
# `selection_top_k` best samples over all prompts; `selection: top_k_per_prompt` (and `rso`) keep `k_per_prompt`
# per prompt; a generator's own `top_k` overrides the round's sampling one.
RENAMED_KEYS = {
    "num_samples_per_prompt": "num_generations",
    "max_new_tokens": "max_completion_length",
    "max_seq_length": "max_length",
    "dataset_split": "dataset_train_split",
    "eval_split": "dataset_test_split",
    "sampling_top_k": "top_k",
    "sft_epochs": "num_train_epochs",
}
# Keys that only some selection strategies read.
SELECTION_KEYS = {
    "selection_top_k": ("top_k",),
    "top_fraction": ("top_fraction",),
    "k_per_prompt": ("top_k_per_prompt", "rso"),
    "rso_beta": ("rso",),
    "reward_threshold": ("threshold",),
    "max_per_prompt": ("threshold", "percentile"),
    "reward_percentile": ("percentile",),
}


@dataclass(frozen=True)
class Range:
    """The values a numeric key allows: `low` <= x <= `high`, None being no bound, `<` instead of `<=` with
    `open_low` or `open_high`. `note` says what a bound means and `fix` what to do; both go into the error message."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    note: str = ""
    fix: str = ""

    def holds(self, x: float) -> bool:
        if x != x:  # NaN (`.nan` in YAML) is in no range
            return False
        if self.low is not None and (x <= self.low if self.open_low else x < self.low):
            return False
        return self.high is None or (x < self.high if self.open_high else x <= self.high)

    def words(self) -> str:
        if self.high is not None and (self.open_low or self.open_high):
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"lie in {left}{self.low:g}, {self.high:g}{right}"
        if self.high is not None:
            return f"lie in {self.low:g}..{self.high:g}"
        if self.low is None:
            return "be a number"
        if self.open_low:
            return f"be > {self.low:g}"
        return f"be at least {self.low:g}" if self.low >= 1 else f"be >= {self.low:g}"


# The range of every numeric key of RSConfig (a test checks that none is missing); keys with one value per round
# are checked value by value. `temperature` is checked on its own: it also takes `auto`.
KEY_RANGES = {
    "seed": Range(),
    "vllm_gpu_memory_utilization": Range(0, 1, open_low=True),
    "verifier_timeout": Range(0, open_low=True),
    "verifier_workers": Range(1),
    "vllm_tensor_parallel_size": Range(1),
    "vllm_server_port": Range(1, 65535),
    "vllm_max_model_length": Range(1, fix="; or leave it unset to size the engine to the run"),
    "num_rounds": Range(1),
    "prompts_per_round": Range(1, fix="; or leave it unset"),
    "max_eval_prompts": Range(1, fix="; or leave it unset"),
    "task_num_train": Range(1),
    "task_num_eval": Range(0),
    "task_min_operand": Range(),
    "task_max_operand": Range(),
    "task_num_eval_ood": Range(1, fix="; or leave the task's out-of-distribution splits out of `eval_splits`"),
    "num_generations": Range(1),
    "temperature_grid": Range(0, open_low=True, note=" (the temperatures `temperature: auto` tries)"),
    "temperature_probe_prompts": Range(1),
    "top_p": Range(0, 1, open_low=True, fix="; 1.0 turns nucleus sampling off"),
    "top_k": Range(0, note=" (0 = off)"),
    "min_p": Range(0, 1, note=" (0 = off)"),
    "max_completion_length": Range(1),
    "generation_batch_size": Range(0, note=" (0 picks by device)"),
    "generation_token_budget": Range(0, note=" (0 picks by device)"),
    "reward_weights": Range(),
    "pass_threshold": Range(),
    "selection_top_k": Range(1, note=" (the samples kept)"),
    "top_fraction": Range(0, 1, open_low=True, note=" (a fraction of all samples)"),
    "k_per_prompt": Range(1),
    "reward_model_refresh_pairs": Range(1, fix="; or leave it unset for every pair"),
    "max_per_prompt": Range(1, fix="; or leave it unset to keep all"),
    "reward_percentile": Range(0, 100),
    "rso_beta": Range(0, open_low=True, fix="; small β approaches best-of-N"),
    "reward_threshold": Range(),
    "min_reward": Range(),
    "min_reward_margin": Range(0),
    "rationalization_samples": Range(1),
    "kl_samples": Range(0, note=" (0: every sample)"),
    "max_kl": Range(0, open_low=True, fix="; or leave it unset"),
    "num_train_epochs": Range(1),
    "learning_rate": Range(0, open_low=True, fix="; 2e-4 is usual with LoRA"),
    "warmup_ratio": Range(0, 1, note=" (a fraction of each round's steps)"),
    "weight_decay": Range(0),
    "max_grad_norm": Range(0, note=" (0 turns clipping off)"),
    "per_device_train_batch_size": Range(1),
    "gradient_accumulation_steps": Range(1),
    "max_length": Range(2, fix="; or leave it unset to use the model's context"),
    "eval_max_new_tokens": Range(1),
    "ddp_timeout": Range(1, note=" (seconds)", fix="; 10800 is 3 h"),
}
# String keys that YAML 1.1 may hand over as booleans (`on`, `off`, `yes`, `no`, `true`, `false`): what each
# boolean means there. Any other string key given a boolean is refused, naming the quoting that fixes it.
YAML_BOOLEAN_MEANS = {
    "kl_to_base": {True: "on", False: "off"},
    "dedupe": {False: None},  # `dedupe: off`: no deduplication, the default
    "dataset_test_split": {False: None},  # `dataset_test_split: no`: no held-out evaluation, as `null`
}


def as_number(key: str, value, kind: type, in_list: bool = False) -> int | float:
    """`value` as a `kind` (int or float), or a ConfigError naming `key`. A number written as text (`2e-4`, which
    YAML 1.1 reads as a string) is read, a whole float (`2.0`) is a whole number; a boolean, a list or other text is
    refused. `in_list`: `value` is one of a list's values."""
    if isinstance(value, str):
        try:
            value = int(value.strip()) if kind is int else float(value)
        except ValueError:
            pass
    if isinstance(value, float) and kind is int and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (float, int)) or (kind is int and not isinstance(value, int)):
        what = {(int, True): "whole numbers", (int, False): "a whole number"}.get((kind, in_list))
        what = what or ("numbers" if in_list else "a number")
        shown = f"the list {value!r}" if isinstance(value, (list, tuple)) else repr(value)
        shown = str(value).lower() if isinstance(value, bool) else shown
        if isinstance(value, bool):
            fix = f"; YAML reads on/off/yes/no/true/false as booleans: give `{key}` a number"
        elif isinstance(value, (list, tuple)) and not in_list and key in KEY_RANGES:
            fix = f"; give one value (lists, one value per round, are for {', '.join(LIST_VALUED_FIELDS)})"
        elif isinstance(value, (list, tuple)) and not in_list:
            fix = "; give one value"
        else:
            fix = ""
        raise ConfigError(f"`{key}` takes {what}, got {shown}{fix}.")
    return float(value) if kind is float else value


def check_range(key: str, value, allowed: Range) -> None:
    """Refuse a number (or a list of numbers, each checked) outside `allowed`, naming `key` and the fix."""
    values = value if isinstance(value, list) else [value]
    if not all(allowed.holds(v) for v in values):
        plural = " values" if isinstance(value, list) else ""
        raise ConfigError(f"`{key}`{plural} must {allowed.words()}{allowed.note}, got {value}{allowed.fix}.")


def _annotation(hint) -> tuple[type, bool]:
    """(element type, is a list) of a field annotation such as `int`, `float | None` or `list[int] | None`."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    return hint, False


@dataclass
class RSConfig:
    # ---- run ----
    output_dir: str = field(default="outputs/rs", metadata={"help": "Folder for every round's outputs."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow reusing an `output_dir` that holds a run with a different config (it is cleared)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed from which every sampling and tie-break seed is derived."})
    num_rounds: int = field(default=2, metadata={"help": "Rejection-sampling rounds (generate, score, select, SFT)."})
    dry_run: bool = field(
        default=False, metadata={"help": "Print the resolved plan and exit without loading a model."}
    )
    # ---- data ----
    dataset_name: str = field(
        default="builtin:arithmetic",
        metadata={
            "help": "Prompts: a local .jsonl/.json/.parquet/.csv file, a datasets hub id, or `builtin:arithmetic` "
            "(questions generated from `seed`)."
        },
    )
    dataset_config: str | None = field(
        default=None,
        metadata={
            "help": "Configuration of a datasets hub id (`load_dataset`'s `name`; TRL's key), for datasets with "
            "several and no default, e.g. `main` for openai/gsm8k. Applies to `dataset_name` when it is a hub id "
            "(and to its test split); a local file or `builtin:` ignores it."
        },
    )
    dataset_train_split: str = field(
        default="train", metadata={"help": "Split of `dataset_name` to sample prompts from."}
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Held-out prompts for greedy evaluation; default: the `dataset_test_split` of `dataset_name`."
        },
    )
    dataset_test_split: str | None = field(
        default="test", metadata={"help": "Split for evaluation; `null` (or `none`) turns held-out evaluation off."}
    )
    prompt_column: str = field(
        default="prompt", metadata={"help": "Column with the prompt: a string or a list of chat messages."}
    )
    id_column: str | None = field(
        default="prompt_id",
        metadata={"help": "Column with a stable prompt id; if absent, ids are `<split>-<row number>`."},
    )
    prompts_per_round: int | None = field(
        default=None, metadata={"help": "Prompts drawn (with the seed) each round; default: all of them."}
    )
    max_eval_prompts: int | None = field(default=None, metadata={"help": "Cap on held-out prompts evaluated."})
    task_num_train: int = field(default=256, metadata={"help": "builtin:arithmetic: training questions."})
    task_num_eval: int = field(default=64, metadata={"help": "builtin:arithmetic: held-out questions."})
    task_min_operand: int = field(default=1, metadata={"help": "builtin:arithmetic: smallest operand."})
    task_max_operand: int = field(default=20, metadata={"help": "builtin:arithmetic: largest operand."})
    task_num_eval_ood: int = field(
        default=64,
        metadata={
            "help": "builtin:arithmetic: questions in each out-of-distribution evaluation split of `eval_splits`. "
            "64, as `task_num_eval`: each split adds one greedy pass over this many prompts to every evaluation."
        },
    )
    eval_splits: list[str] | None = field(
        default=None,
        metadata={
            "help": "The evaluation sets, each evaluated greedily every round and for the base model: `heldout` (the "
            "`dataset_test_split` or `eval_dataset_name`; its metrics keep their names, `eval/accuracy` and "
            "`eval/reward`) and, for builtin:arithmetic only, its out-of-distribution splits, reported as "
            "`eval/<split>/accuracy` and `eval/<split>/reward` (TRL's Trainer names a dict of eval datasets the "
            "same way, `eval_<name>_<metric>`): `phrasings` (a + b asked in other words), `words` (operands in "
            "words), `stories` (word problems), `subtraction` and `three_terms` (other skills than the one "
            "trained). Default: `heldout` plus, for builtin:arithmetic, phrasings, words and stories, the "
            "two-term additions the training task teaches, so a recipe that fits the training phrasing without "
            "learning to add shows it; none when `dataset_test_split` is null (evaluation off, as before)."
        },
    )
    # ---- generation ----
    num_generations: int = field(default=8, metadata={"help": "N: completions sampled per prompt."})
    temperature: list[str] = field(
        default_factory=lambda: [0.8],
        metadata={
            "help": "Sampling temperature (per round), or `auto`: the round probes `temperature_grid` on "
            "`temperature_probe_prompts` of its prompts and samples at the one with the best expected best-of-N "
            "reward (rs_trainer/phases/temperature.py)."
        },
    )
    temperature_grid: list[float] = field(
        default_factory=lambda: [0.6, 0.8, 1.0, 1.2],
        metadata={"help": "`temperature: auto`: the temperatures the probe tries."},
    )
    temperature_probe_prompts: int = field(
        default=8,
        metadata={
            "help": "`temperature: auto`: prompts of the round sampled N times at every temperature of the grid; "
            "the extra cost is (grid size - 1) x these prompts' samples."
        },
    )
    top_p: list[float] = field(default_factory=lambda: [1.0], metadata={"help": "Nucleus sampling p (per round)."})
    top_k: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "Sample from the k most likely tokens; 0 = off (per round)."}
    )
    min_p: list[float] = field(
        default_factory=lambda: [0.0],
        metadata={
            "help": "Drop tokens less likely than min_p x the most likely one's probability, after temperature, "
            "top-k and top-p, as transformers does; 0 = off (per round)."
        },
    )
    max_completion_length: list[int] = field(
        default_factory=lambda: [64], metadata={"help": "Completion length cap in tokens (per round)."}
    )
    generators: list[dict] = field(
        default_factory=list,
        metadata={
            "help": "Where samples come from, each a mapping with a `name`: the policy in-process (the default when "
            "none is listed), a frozen model such as a teacher (`model: <path>`), an OpenAI-compatible endpoint "
            "(`engine: openai`, `base_url`, `model`) or a server rs_trainer starts each round (`engine: server`, "
            "`command`). Every key is documented in rs_trainer/generators/spec.py."
        },
    )
    generation_batch_size: int = field(
        default=0, metadata={"help": "Rows per generation batch; 0 picks by device (64 on CPU, 256 on GPU)."}
    )
    generation_token_budget: int = field(
        default=0,
        metadata={
            "help": "KV-cache tokens a generation batch may hold: rows x (longest prompt + max_completion_length) "
            "stay under it, and a batch that runs out of GPU memory is halved and retried; 0 picks by device "
            "(no budget on the CPU, 262144 tokens on a GPU)."
        },
    )
    generation_engine: str = field(
        default="auto",
        metadata={
            "help": "`rs`: one prefill per prompt shared by its N rows, finished rows dropped; `hf`: model.generate "
            "on N-times repeated prompts; `auto`: rs when the model's KV cache allows it."
        },
    )
    # ---- TRL's vLLM switches (GRPOConfig's names), mapped onto one `generators` entry for the policy
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "TRL's switch: the policy samples through vLLM (`vllm_mode`); the same as listing one "
            "`generators` entry, which `generators_from_trl_keys` writes (docs/generators.md#trls-vllm-keys)."
        },
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "`colocate`: vLLM in every training process (`engine: vllm`); `server`: a `vllm serve` "
            "OpenAI server you started with `--enable-lora`, each round's adapter hot-loaded (LoRA only)."
        },
    )
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "colocate: vLLM's share of the GPU."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "colocate: GPUs per vLLM engine."})
    vllm_enable_sleep_mode: bool = field(
        default=False, metadata={"help": "colocate: vLLM frees its memory while SFT runs (weights kept in host RAM)."}
    )
    vllm_max_model_length: int | None = field(
        default=None,
        metadata={"help": "colocate: vLLM's `max_model_len`; default the run's longest prompt plus completion."},
    )
    vllm_server_base_url: str | None = field(
        default=None, metadata={"help": "server: the server's URL, e.g. http://127.0.0.1:8000 (`/v1` is added)."}
    )
    vllm_server_host: str = field(
        default="0.0.0.0", metadata={"help": "server: host, without `vllm_server_base_url`."}
    )
    vllm_server_port: int = field(default=8000, metadata={"help": "server: port, without `vllm_server_base_url`."})
    # ---- scoring ----
    reward_funcs: list[str] = field(
        default_factory=lambda: [arithmetic.VERIFIER],
        metadata={
            "help": "Scorers: built-in names (numeric_answer, math_answer, code_tests), `reward_model:<hub id, "
            "folder or embedded:name>`, dotted paths to functions with TRL's reward signature "
            "`fn(prompts, completions, **columns) -> list[float | None]`, or an LLM judge as a mapping "
            "`{kind: judge, name, base_url, model, template, score}` (docs/options.md). Default: the verifier of "
            "the default dataset, builtin:arithmetic (numeric_answer)."
        },
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "Weight of each scorer in the total reward; default 1.0 each."}
    )
    reward_model_refresh: str | None = field(
        default=None,
        metadata={
            "help": "Llama 2's refresh: a reward-model recipe (as `rs-trainer reward-model` takes) to train a new "
            "reward model with before every round after the first, on pairs of the run's own samples so far ranked "
            "by the verifier (`eval_reward_funcs` stands in for the labellers), plus the first reward model's pairs. "
            "It replaces the `reward_model:` scorer of `reward_funcs`. Default off."
        },
    )
    reward_model_refresh_pairs: int | None = field(
        default=None,
        metadata={"help": "`reward_model_refresh`'s label budget: at most this many pairs from each round."},
    )
    verifier_timeout: float = field(
        default=30.0,
        metadata={
            "help": "Seconds `math_answer` may spend on one sample, in a worker process that is killed past it: the "
            "sample scores None (no opinion), is marked `timed_out` and counted in `rs/scorer_timeouts`."
        },
    )
    verifier_workers: int = field(
        default=2, metadata={"help": "Worker processes `math_answer` checks samples in, per training process."}
    )
    reward_model_device: str | None = field(
        default=None,
        metadata={
            "help": "Device of `reward_model:` scorers, e.g. `cuda:1` to keep the reward model off the policy's "
            "GPU; default this process's GPU, else the CPU. Reward models score in bf16 on GPU."
        },
    )
    eval_reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Scorers that judge held-out accuracy and pass@k (weights 1.0); default `reward_funcs`. With a "
            "reward model in `reward_funcs`, name the verifier here, so success is measured by ground truth."
        },
    )
    pass_threshold: float = field(
        default=1.0, metadata={"help": "A sample with reward >= this counts as a success for pass@k and accuracy."}
    )
    # ---- selection ----
    selection: str = field(
        default="best_of_n", metadata={"help": f"Selection strategy: one of {', '.join(SELECTION_STRATEGIES)}."}
    )
    selection_top_k: int | None = field(
        default=None, metadata={"help": "`selection: top_k`: samples kept over all prompts."}
    )
    top_fraction: float | None = field(
        default=None, metadata={"help": "`top_fraction`: fraction of all samples kept."}
    )
    k_per_prompt: int = field(default=1, metadata={"help": "`top_k_per_prompt`: samples kept per prompt."})
    max_per_prompt: int | None = field(
        default=None,
        metadata={"help": "`threshold` and `percentile`: keep at most this many (the best) per prompt; default all."},
    )
    reward_percentile: list[float] = field(
        default_factory=lambda: [50.0],
        metadata={
            "help": "`percentile`: keep samples at or above their own prompt's q-th reward percentile (0..100), best "
            "first; a list rises per round (ReST's Improve steps), the last value repeats."
        },
    )
    rso_beta: list[float] = field(
        default_factory=lambda: [0.5],
        metadata={
            "help": "`rso`: β of statistical rejection sampling toward π·exp(r/β) (RSO), per round; small β tends to "
            "best-of-N, large β to a uniform draw. Keeps up to `k_per_prompt` per prompt."
        },
    )
    reward_threshold: float | None = field(
        default=None, metadata={"help": "`threshold`: keep samples with reward >= this."}
    )
    min_reward: float | None = field(
        default=None, metadata={"help": "Never select a sample below this reward, whatever the strategy."}
    )
    drop_truncated: bool = field(
        default=False, metadata={"help": "Never select a truncated (no end token) or empty completion."}
    )
    dedupe: str | None = field(
        default=None,
        metadata={
            "help": "`exact` or `normalised` (whitespace and case ignored): keep one copy, the lowest sample_index, "
            "of each repeated completion of a prompt before selecting; default off."
        },
    )
    drop_constant_prompts: bool = field(
        default=False,
        metadata={"help": "Skip prompts whose samples all have the same reward: nothing to learn from them."},
    )
    min_reward_margin: float | None = field(
        default=None, metadata={"help": "Skip prompts whose best reward beats their median reward by less than this."}
    )
    prefer_shorter: bool = field(
        default=True, metadata={"help": "Among equal rewards prefer the shorter completion (then a seeded draw)."}
    )
    matched_random: bool = field(
        default=False,
        metadata={
            "help": "The recipe's own control: per prompt, keep exactly as many samples as `selection` would, drawn "
            "at random (seeded) among the same candidates after the same filters, whatever their reward."
        },
    )
    candidate_models: list[str] = field(
        default_factory=list,
        metadata={
            "help": "best_of_n only: more models (hub ids, local folders or `embedded:<name>`) that each sample N "
            "completions per prompt and compete with `model_name_or_path`; ignored by training."
        },
    )
    # ---- rationalization (STaR) ----
    rationalize: bool = field(
        default=False,
        metadata={
            "help": "STaR rationalization: for prompts where none of the round's samples passes, sample again with "
            "the ground truth given as a hint (`rationalization_hint`), keep the best completion that passes, and "
            "train on it without the hint. Rows are marked `rationalized: true`."
        },
    )
    rationalization_hint: str = field(
        default="\n(Hint: the answer is {answer}.)",
        metadata={
            "help": "Appended to the prompt's last user message when rationalizing; `{column}` names a dataset "
            "column holding the ground truth."
        },
    )
    rationalization_samples: int = field(
        default=4, metadata={"help": "Samples per failed prompt when rationalizing (the policy, in-process)."}
    )
    # ---- drift ----
    kl_to_base: str = field(
        default="auto",
        metadata={
            "help": "KL(π‖π_ref) and entropy of the policy's own samples each round (`rs/kl_ref`, `rs/entropy`): "
            "`auto` with LoRA (π_ref: the adapter disabled, no second copy), `on` also without LoRA (keeps a frozen "
            "copy of the base model), `off`."
        },
    )
    kl_samples: int = field(
        default=128,
        metadata={
            "help": "KL and entropy are estimated on a seeded draw of at most this many of the round's policy "
            "samples (0: all). Two forward passes over every sample cost more than sampling them did."
        },
    )
    max_kl: float | None = field(
        default=None, metadata={"help": "When a round's `rs/kl_ref` passes this, `max_kl_action` happens."}
    )
    max_kl_action: str = field(
        default="warn", metadata={"help": "`warn`, or `stop`: end the run before that round's SFT."}
    )
    # ---- SFT ----
    num_train_epochs: int = field(default=2, metadata={"help": "Epochs over the selected set each round."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of AdamW."})
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "transformers scheduler name."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of a round's steps spent warming up."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 = off."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "SFT sequences per device per step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_length: int | None = field(
        default=None, metadata={"help": "Longest prompt + completion trained on; default: the model's context."}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass (transformers' gradient checkpointing)."},
    )
    pool_previous_rounds: bool = field(
        default=False, metadata={"help": "SFT on the selected samples of this and every earlier round (Llama 2)."}
    )
    sft_from: str = field(
        default="previous",
        metadata={"help": "`previous`: continue from last round's weights; `base`: restart each round (ReST-EM)."},
    )
    # ---- evaluation and saving ----
    eval_max_new_tokens: int = field(default=48, metadata={"help": "Greedy evaluation's completion length cap."})
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={"help": "Trackers, as in TRL: tensorboard (under output_dir/rs_trainer/), wandb, all, or none."},
    )
    save_checkpoints: bool = field(default=True, metadata={"help": "Save the model or adapter after every round."})
    run_name: str | None = field(
        default=None, metadata={"help": "The run's name in the trackers (TRL's key); default the output_dir's name."}
    )
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "At the end of the run, write the last round's policy, its adapter merged, with a model card to "
            "output_dir/merged and upload it to `hub_model_id` (TRL's keys; `rs-trainer export model` does it later)."
        },
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "The Hub repository `push_to_hub` uploads to, e.g. org/name."}
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the `hub_model_id` repository private."})
    # ---- several processes ----
    ddp_timeout: int = field(
        default=10800,
        metadata={
            "help": "Seconds a collective may wait before the job aborts (the process group's timeout; TRL and "
            "transformers' name). Ranks wait for the slowest one's generation, for rank 0 writing the served model "
            "and starting a server, and for checkpoint writes: the default is 3 hours, against NCCL's 10 minutes."
        },
    )
    # ---- deprecated spellings (RENAMED_KEYS), accepted with a warning for one release ----
    num_samples_per_prompt: int | None = field(default=None, metadata={"help": "Deprecated: `num_generations`."})
    max_new_tokens: list[int] | None = field(default=None, metadata={"help": "Deprecated: `max_completion_length`."})
    max_seq_length: int | None = field(default=None, metadata={"help": "Deprecated: `max_length`."})
    dataset_split: str | None = field(default=None, metadata={"help": "Deprecated: `dataset_train_split`."})
    eval_split: str | None = field(default=UNSET, metadata={"help": "Deprecated: `dataset_test_split`."})
    sampling_top_k: list[int] | None = field(default=None, metadata={"help": "Deprecated: `top_k`."})
    sft_epochs: int | None = field(default=None, metadata={"help": "Deprecated: `num_train_epochs`."})

    def __post_init__(self):
        if any(isinstance(g, list) for g in self.generators):  # `--generators '[{...}, {...}]'`: one list
            self.generators = [e for g in self.generators for e in (g if isinstance(g, list) else [g])]
        self._check_types_and_ranges()
        self._apply_renamed_keys()
        for name in ("dataset_test_split", "eval_dataset_name", "id_column"):
            if isinstance(getattr(self, name), str) and getattr(self, name).lower() in ("", "none", "null"):
                setattr(self, name, None)  # `--dataset_test_split none` on the command line
        self.validate()

    def _check_types_and_ranges(self):
        """The first check: every key's type, and every numeric key's range (`KEY_RANGES`), so that no later check
        meets a list where a number belongs. A per-round key's single value becomes a one-value list, a name list's
        single name a one-name list, and a boolean that YAML made of `on`/`off` what it means there
        (`YAML_BOOLEAN_MEANS`)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            key, value = f.name, getattr(self, f.name)
            kind, is_list = _annotation(hints[key])
            if value is None or key == "generators":  # generators: checked entry by entry in `generator_specs`
                continue
            if key in SCORER_LIST_KEYS:  # names, or `kind: judge` mappings: checked entry by entry
                setattr(self, key, self._scorer_entries(key, value))
                continue
            if key == "temperature":
                value = self._temperatures(value)
            elif kind in (int, float):
                value = self._numbers(key, value, kind, is_list)
            elif kind is bool and not isinstance(value, bool):
                raise ConfigError(f"`{key}` takes true or false, got {value!r}.")
            elif kind is str:
                value = self._text(key, value, is_list)
            setattr(self, key, value)

    @staticmethod
    def _scorer_entries(key: str, value) -> list:
        """`reward_funcs` / `eval_reward_funcs`: each entry a scorer's name or a `kind: judge` mapping
        (`rewards.judge.parse_judge_entry`), the names unique."""
        from rs_trainer.rewards.judge import parse_judge_entry, scorer_name

        entries = [value] if isinstance(value, (str, dict)) else value
        if not isinstance(entries, (list, tuple)) or not entries:
            raise ConfigError(f"`{key}` takes scorer names or `kind: judge` mappings (a list), got {value!r}.")
        for i, entry in enumerate(entries):
            if isinstance(entry, dict):
                parse_judge_entry(entry, f"`{key}[{i}]`")
            elif not isinstance(entry, str) or not entry:
                raise ConfigError(f"`{key}[{i}]` is {entry!r}; give a scorer's name or a `kind: judge` mapping.")
        names = [scorer_name(e) for e in entries]
        if len(set(names)) != len(names):
            raise ConfigError(f"`{key}` names a scorer twice ({names}); give each a different name.")
        return list(entries)

    @staticmethod
    def _numbers(key: str, value, kind: type, is_list: bool) -> int | float | list:
        allowed = KEY_RANGES[RENAMED_KEYS.get(key, key)]  # a deprecated spelling has its new key's range
        if not is_list:
            number = as_number(key, value, kind)
            check_range(key, number, allowed)
            return number
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values and RENAMED_KEYS.get(key, key) in LIST_VALUED_FIELDS:
            raise ConfigError(f"`{key}` is an empty list; give one value or one per round.")
        numbers = [as_number(key, v, kind, in_list=True) for v in values]
        check_range(key, numbers, allowed)
        return numbers

    def _temperatures(self, value) -> list:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ConfigError("`temperature` is an empty list; give one value or one per round.")
        temperatures = [self._temperature_value(r, t) for r, t in enumerate(values)]
        for r, t in enumerate(temperatures):
            if t != AUTO and t < 0:
                raise ConfigError(f"`temperature` for round {r} is negative ({t}); 0 is greedy.")
        return temperatures

    @staticmethod
    def _text(key: str, value, is_list: bool) -> str | list[str] | None:
        if is_list:
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
                raise ConfigError(f"`{key}` takes names (one, or a list of them), got {value!r}.")
            return list(values)
        if isinstance(value, bool) and value in YAML_BOOLEAN_MEANS.get(key, {}):
            return YAML_BOOLEAN_MEANS[key][value]
        if isinstance(value, bool):
            raise ConfigError(
                f"`{key}` takes text, got the boolean {str(value).lower()} (YAML reads on, off, yes, no, true and "
                f'false as booleans); put the value in quotes: `{key}: "..."`.'
            )
        if not isinstance(value, str):
            fix = "give one value" if isinstance(value, (list, tuple, dict)) else "put the value in quotes"
            raise ConfigError(f"`{key}` takes text, got {value!r}; {fix}.")
        return value

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

    def validate(self):
        """Checks across keys that need no model or data (each key's own type and range is checked first, in
        `_check_types_and_ranges`); those that need M (prompt count) are in `check_selection_size`."""
        self._validate_refresh()
        self._validate_trl_vllm_keys()
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("`push_to_hub` needs `hub_model_id`, the repository to upload to (org/name).")
        if self.push_to_hub and not self.save_checkpoints:
            raise ConfigError("`push_to_hub` uploads the last round's checkpoint; set `save_checkpoints: true`.")
        if self.selection not in SELECTION_STRATEGIES:
            raise ConfigError(f"`selection` {self.selection!r} is unknown; choose one of {SELECTION_STRATEGIES}.")
        if self.selection == "top_k" and self.selection_top_k is None:
            raise ConfigError(
                "`selection: top_k` needs `selection_top_k` >= 1 (the samples kept). `top_k` is sampling's top-k, as "
                "in TRL: if a recipe's `top_k` meant the samples kept, rename it `selection_top_k`."
            )
        if self.selection == "top_fraction" and self.top_fraction is None:
            raise ConfigError("`selection: top_fraction` needs 0 < `top_fraction` <= 1.")
        if self.selection == "threshold" and self.reward_threshold is None:
            raise ConfigError("`selection: threshold` needs `reward_threshold`.")
        if any(b < a for a, b in itertools.pairwise(self.reward_percentile)):
            raise ConfigError(f"`reward_percentile` must not fall from round to round, got {self.reward_percentile}.")
        if isinstance(self.dedupe, str) and self.dedupe.lower() in ("", "none", "null"):
            self.dedupe = None
        self._check_dataset_files()
        self._validate_eval_splits()
        if self.dedupe is not None and self.dedupe not in DEDUPE_MODES:
            raise ConfigError(f"`dedupe` must be one of {DEDUPE_MODES} or null, got {self.dedupe!r}.")
        if self.kl_to_base not in ("auto", "on", "off"):
            raise ConfigError(f"`kl_to_base` must be auto, on or off, got {self.kl_to_base!r}.")
        if self.max_kl_action not in ("warn", "stop"):
            raise ConfigError(f"`max_kl_action` must be warn or stop, got {self.max_kl_action!r}.")
        if self.max_kl is not None and self.kl_to_base == "off":
            raise ConfigError("`max_kl` needs KL measured: set `kl_to_base` auto or on, or leave `max_kl` unset.")
        if self.sft_from not in ("previous", "base"):
            raise ConfigError(f"`sft_from` must be `previous` or `base`, got {self.sft_from!r}.")
        if AUTO in self.temperature and not self.temperature_grid:
            raise ConfigError("`temperature_grid` must list temperatures above 0 for `temperature: auto`, got [].")
        for r, t in enumerate(self.temperature):
            if t == 0 and self.num_generations > 1:
                raise ConfigError(
                    f"`temperature` 0 (greedy) in round {r} with `num_generations` "
                    f"{self.num_generations} would give N identical completions; raise the temperature "
                    "or set `num_generations: 1`."
                )
        if self.generation_engine not in ("auto", "rs", "hf"):
            raise ConfigError(f"`generation_engine` must be auto, rs or hf, got {self.generation_engine!r}.")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(
                f"`reward_weights` has {len(self.reward_weights)} values for {len(self.reward_funcs)} "
                "`reward_funcs`; give one weight per scorer."
            )
        self.generator_specs()  # refuses a bad `generators` entry by name
        self._validate_optimisation()
        self._validate_selection_keys()
        self._warn_unused_round_values()

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
        from transformers import SchedulerType

        names = [t.value for t in SchedulerType]
        if self.lr_scheduler_type not in names:
            raise ConfigError(f"`lr_scheduler_type` {self.lr_scheduler_type!r} is unknown; choose one of {names}.")
        self._validate_trackers()

    def _validate_trackers(self):
        import accelerate.utils
        from accelerate.utils import LoggerType

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

    def _validate_selection_keys(self):
        """A key that only one strategy reads, set under another strategy, is a mistake the run would hide."""
        defaults = {
            f.name: (f.default_factory() if callable(f.default_factory) else f.default)
            for f in dataclasses.fields(self)
        }
        for key, strategies in SELECTION_KEYS.items():
            if getattr(self, key) != defaults[key] and self.selection not in strategies:
                raise ConfigError(
                    f"`{key}` is set but `selection` is {self.selection!r}, which ignores it; it applies to "
                    f"`selection: {' or '.join(strategies)}`. Remove `{key}` or change `selection`."
                )

    def _warn_unused_round_values(self):
        for name in (*PER_ROUND_FIELDS, "reward_percentile", "rso_beta"):
            values = getattr(self, name)
            if len(values) > self.num_rounds:
                warnings.warn(
                    f"`{name}` has {len(values)} values for {self.num_rounds} round(s): {values[self.num_rounds :]} "
                    f"wait for rounds {self.num_rounds}..{len(values) - 1}, run when this output_dir is resumed "
                    "with a larger `num_rounds`.",
                    stacklevel=3,
                )

    def _validate_trl_vllm_keys(self):
        if self.vllm_mode not in ("colocate", "server"):
            raise ConfigError(f"`vllm_mode` must be `colocate` or `server` (TRL's values), got {self.vllm_mode!r}.")
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in TRL_VLLM_KEYS}
        set_keys = [k for k in TRL_VLLM_KEYS if getattr(self, k) != defaults[k]]
        if set_keys and not self.use_vllm:
            raise ConfigError(
                f"{', '.join(f'`{k}`' for k in set_keys)} set but `use_vllm` is false; set `use_vllm: true`."
            )
        if self.use_vllm and self.generators:
            raise ConfigError(
                "`use_vllm` describes the policy's one generator, and `generators` lists its own; drop `use_vllm` and "
                "set `engine: vllm` on the policy's entry (docs/generators.md#trls-vllm-keys)."
            )

    def generators_from_trl_keys(self, model_name: str, use_peft: bool) -> None:
        """With `use_vllm`, TRL's vLLM keys become the policy's one `generators` entry (a no-op without it):

        - `vllm_mode: colocate`: `engine: vllm` in each training process, with `gpu_memory_utilization`,
          `tensor_parallel_size`, `enable_sleep_mode` and (`vllm_max_model_length`) `vllm_kwargs.max_model_len`;
        - `vllm_mode: server`: `engine: openai` against `vllm_server_base_url` (or host and port) plus `/v1`, serving
          `model_name`, each round's LoRA adapter hot-loaded (`adapter_api: vllm`). A `vllm serve` OpenAI server,
          not `trl vllm-serve` (whose weight-sync protocol is TRL's own); LoRA only, as a server that stays up gets
          a full model's new weights no other way here (`engine: server` restarts one each round instead).

        >>> args = RSConfig(use_vllm=True, vllm_gpu_memory_utilization=0.5, vllm_enable_sleep_mode=True)
        >>> args.generators_from_trl_keys("Qwen/Qwen2.5-1.5B-Instruct", use_peft=True)
        >>> args.generators
        [{'name': 'policy', 'engine': 'vllm', 'gpu_memory_utilization': 0.5, 'tensor_parallel_size': 1, \
'enable_sleep_mode': True}]
        >>> args = RSConfig(use_vllm=True, vllm_mode="server", vllm_server_base_url="http://10.0.0.2:8000/")
        >>> args.generators_from_trl_keys("Qwen/Qwen2.5-1.5B-Instruct", use_peft=True)
        >>> args.generators
        [{'name': 'policy', 'engine': 'openai', 'base_url': 'http://10.0.0.2:8000/v1', \
'model': 'Qwen/Qwen2.5-1.5B-Instruct', 'adapter_api': 'vllm'}]
        """
        if not self.use_vllm:
            return
        if self.vllm_mode == "colocate":
            entry = {
                "name": "policy",
                "engine": "vllm",
                "gpu_memory_utilization": self.vllm_gpu_memory_utilization,
                "tensor_parallel_size": self.vllm_tensor_parallel_size,
                "enable_sleep_mode": self.vllm_enable_sleep_mode,
            }
            if self.vllm_max_model_length is not None:
                entry["vllm_kwargs"] = {"max_model_len": self.vllm_max_model_length}
        else:
            if not use_peft:
                raise ConfigError(
                    "`vllm_mode: server` hot-loads each round's LoRA adapter into a server that stays up, so it needs "
                    "`use_peft: true`; for full fine-tuning use `vllm_mode: colocate`, or a `generators` entry with "
                    "`engine: server` that restarts the server on each round's weights (docs/generators.md)."
                )
            url = self.vllm_server_base_url or f"http://{self.vllm_server_host}:{self.vllm_server_port}"
            url = url.rstrip("/")
            entry = {
                "name": "policy",
                "engine": "openai",
                "base_url": url if url.endswith("/v1") else url + "/v1",
                "model": model_name,
                "adapter_api": "vllm",
            }
        self.generators = [entry]

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

    def _apply_renamed_keys(self) -> None:
        """Move each deprecated spelling's value to its new key, with a warning; both given is refused."""
        defaults = {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(self)
        }
        for old, new in RENAMED_KEYS.items():
            value = getattr(self, old)
            if value == UNSET or (value is None and old != "eval_split"):  # not given (`eval_split: null` is)
                continue
            if getattr(self, new) != defaults[new] and getattr(self, new) != value:
                raise ConfigError(
                    f"`{old}` and `{new}` are both set; `{old}` is the old name of `{new}`: keep `{new}`."
                )
            warnings.warn(
                f"`{old}` is deprecated and will be removed in the next release; use `{new}` (TRL's name).",
                FutureWarning,
                stacklevel=4,
            )
            setattr(self, new, value)
            setattr(self, old, UNSET if old == "eval_split" else None)

    @staticmethod
    def _temperature_value(r: int, value) -> float | str:
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        try:
            if isinstance(value, bool) or float(value) != float(value):  # YAML's `off` (False), or `.nan`
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"`temperature` for round {r} is {value!r}; give a number or `auto` (chosen each round by a probe)."
            ) from None

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


# Keys that do not change what a run computes: a run may be continued with other values of these.
NON_SEMANTIC_KEYS = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "dry_run",
        "report_to",
        "ddp_timeout",
        "gradient_checkpointing",
        "run_name",
        "push_to_hub",
        "hub_model_id",
        "hub_private_repo",
        *RENAMED_KEYS,
    }
)


# TRL's vLLM keys besides `use_vllm` (`RSConfig.generators_from_trl_keys`).
TRL_VLLM_KEYS = (
    "vllm_mode",
    "vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size",
    "vllm_enable_sleep_mode",
    "vllm_max_model_length",
    "vllm_server_base_url",
    "vllm_server_host",
    "vllm_server_port",
)

# Keys a resumed run may change: how many rounds it runs (more rounds continue from the last one; the rounds already
# finished are read back, never recomputed), and how the work is fitted into memory, not what is computed. A run
# stopped by an out-of-memory error resumes with a smaller batch or token budget.
RESUMABLE_KEYS = frozenset(
    {
        "num_rounds",
        "generation_batch_size",
        "generation_token_budget",
        "generation_engine",
        "reward_model_device",
        "verifier_workers",
    }
)
# SFT's micro-batch and accumulation may trade against each other: the same sequences per optimizer step.
TRAIN_BATCH_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps")


def resume_blockers(old: dict, new: dict) -> list[str]:
    """The changed keys (`config_changes`) that stop a run from resuming: all but `RESUMABLE_KEYS`, and the SFT
    batch keys when their product, the sequences per optimizer step on each process, changed.

    >>> resume_blockers({"num_rounds": 1, "seed": 1}, {"num_rounds": 3, "seed": 2})
    ['seed']
    >>> old = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}
    >>> resume_blockers(old, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2})
    []
    >>> resume_blockers(old, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1})
    ['per_device_train_batch_size']
    """
    changed = [k for k in config_changes(old, new) if k not in RESUMABLE_KEYS]
    defaults = RSConfig().to_dict()

    def sequences_per_step(config: dict) -> int:
        a, b = (config.get(k, defaults[k]) for k in TRAIN_BATCH_KEYS)
        return a * b

    if sequences_per_step(old) == sequences_per_step(new):
        changed = [k for k in changed if k not in TRAIN_BATCH_KEYS]
    return changed


def config_changes(old: dict, new: dict) -> list[str]:
    """The semantic keys whose values differ between a saved run config (`rs` section) and this one. A key saved
    under its deprecated name counts under its new one; a key the saved config lacks (added in a later release)
    counts only when this run sets it away from its default, so an upgrade alone never blocks a resume."""
    if "sampling_top_k" in old:  # saved before the renames: its `top_k` was the selection's
        old = {("selection_top_k" if k == "top_k" else k): v for k, v in old.items()}
    old = {RENAMED_KEYS.get(k, k): v for k, v in old.items() if k not in NON_SEMANTIC_KEYS or k in RENAMED_KEYS}
    new = {k: v for k, v in new.items() if k not in NON_SEMANTIC_KEYS}
    defaults = json.loads(json.dumps(RSConfig().to_dict(), default=str))
    changed = []
    for key in sorted(set(old) | set(new)):
        before = old.get(key, defaults.get(key))
        if before != new.get(key):
            changed.append(key)
    return changed


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
