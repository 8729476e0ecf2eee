"""Everything a run needs before its first round, checked before anything is written: `prepare_run` builds the
frozen `RunInputs` (prompts, their token ids, tokenizer, scorers, generators), `build_policy` the trained model and
its optimizer (`Policy`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from rs_trainer.config import resume_blockers, run_config
from rs_trainer.errors import ConfigError, first_line
from rs_trainer.phases.generation import check_prompt_lengths, encode_prompts
from rs_trainer.phases.rationalization import hinted_prompts
from rs_trainer.phases.temperature import AUTO
from rs_trainer.rewards.scoring import Scoring
from rs_trainer.run import data
from rs_trainer.run.deepspeed import configure_batch_sizes, configure_gradient_clipping
from rs_trainer.run.layout import RunLayout
from rs_trainer.run.metrics import HELDOUT
from rs_trainer.run.models import (
    check_model_folder,
    enable_checkpointing,
    load_policy,
    load_tokenizer,
    resolve_model_path,
)
from rs_trainer.run.ranks import check_shared_storage, local_device
from rs_trainer.run.sharding import Sharding
from rs_trainer.trainer.serving import sampling_params


@dataclass(frozen=True)
class RunInputs:
    """What every collaborator of the trainer reads, fixed at setup: the recipe, the run's files, the prompts and
    their token ids, the tokenizer, the scorers and the generators."""

    args: object  # RSConfig
    model_args: object  # trl.ModelConfig
    accelerator: object
    files: RunLayout
    train_prompts: list[dict]
    eval_sets: dict[str, list[dict]]  # each evaluation set's prompts, by its name in `eval_splits`, in that order
    prompt_by_id: dict[str, dict]
    model_path: str
    tokenizer: object
    prompt_ids: dict[str, list[int]]  # each training prompt's ids, as rendered for generation
    eval_prompt_ids: dict[str, list[int]]  # each evaluation prompt's, of every set
    context: int  # the model's context (10**9 when it names none)
    max_len: int  # longest prompt + completion trained on
    sampling_len: int  # longest training prompt + longest completion any round asks: an engine's `max_model_len`
    scoring: Scoring
    generator_specs: list
    sample_ranges: dict[str, range]  # each generator's sample indices
    endpoints: dict  # `engine: openai` generators, checked and ready


@dataclass
class Policy:
    """The model being trained, as prepared by Accelerate, with its optimizer; what drift is measured against
    (`kl_reference`: "adapter", a frozen model, or None); and the trainable weights `sft_from: base` restores."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    sharding: Sharding  # plain, FSDP2 or ZeRO-3: what every phase asks for full weights, checkpoints and loads
    kl_reference: object = None
    base_state: dict | None = None


def prepare_run(args, model_args, accelerator) -> RunInputs:
    """Load and check the prompts, scorers, tokenizer and generators, and the `output_dir`; nothing is written
    before all of them pass."""
    files = RunLayout(Path(args.output_dir))
    train_prompts = data.load_prompts(args, args.dataset_train_split)
    eval_sets = load_eval_sets(args)
    eval_prompts = [p for prompts in eval_sets.values() for p in prompts]
    if args.rationalize:
        check_rationalization_hint(args.rationalization_hint, train_prompts[0])
    if args.prompts_per_round and args.prompts_per_round > len(train_prompts):
        raise ConfigError(
            f"`prompts_per_round` ({args.prompts_per_round}) is more than the {len(train_prompts)} prompts "
            f"in {args.dataset_name} [{args.dataset_train_split}]; lower it, or leave it unset to use them all."
        )
    args.check_selection_size(args.prompts_per_round or len(train_prompts))
    if args.reward_model_refresh:
        check_refresh_recipe(args, accelerator.num_processes)
    reward_device = local_device(args.reward_model_device, accelerator.num_processes, accelerator.device)
    with Sharding.frozen_load():  # reward models are whole on each rank, never ZeRO-3 partitions
        scoring = Scoring.from_recipe(args, reward_device, train_prompts + eval_prompts)
    model_path, tokenizer = load_model_tokenizer(model_args.model_name_or_path)
    specs, ranges, endpoints = setup_generators(args, files, tokenizer, model_args.use_peft)
    if AUTO in args.temperature and not any(s.is_policy and s.temperature is None for s in specs):
        raise ConfigError(
            "`temperature: auto` probes the policy at the round's temperature, but no generator is the policy "
            "without its own `temperature`; list one, or give `temperature` numbers."
        )
    (prompt_ids, eval_prompt_ids), context, max_len = encode_and_check_lengths(
        args, tokenizer, model_path, train_prompts, eval_prompts
    )
    hinted = hinted_prompts(train_prompts, args.rationalization_hint) if args.rationalize else []
    hinted_ids = encode_prompts(tokenizer, hinted)
    check_shared_storage(accelerator, files.root)  # every later decision reads `output_dir`, on every rank
    check_output_dir(args, model_args, accelerator, files)
    scoring.serve_judges(accelerator, files.judge_log)  # last: a judge's server the run starts (minutes on a GPU)
    return RunInputs(
        args=args,
        model_args=model_args,
        accelerator=accelerator,
        files=files,
        train_prompts=train_prompts,
        eval_sets=eval_sets,
        prompt_by_id={p["prompt_id"]: p for p in train_prompts},
        model_path=model_path,
        tokenizer=tokenizer,
        prompt_ids=prompt_ids,
        eval_prompt_ids=eval_prompt_ids,
        context=context,
        max_len=max_len,
        sampling_len=sampling_length(args, specs, prompt_ids, context, eval_prompt_ids.values(), hinted_ids),
        scoring=scoring,
        generator_specs=specs,
        sample_ranges=ranges,
        endpoints=endpoints,
    )


def build_policy(inputs: RunInputs) -> Policy:
    """The policy loaded (LoRA on or off), its optimizer, both prepared by Accelerate; the KL reference and the
    base weights for `sft_from: base`."""
    from trl import get_peft_config

    args, model_args, acc = inputs.args, inputs.model_args, inputs.accelerator
    try:
        model, _ = load_policy(model_args, get_peft_config(model_args))
    except ValueError as err:
        if "target_modules" not in str(err) and "Target modules" not in str(err):
            raise
        raise ConfigError(
            f"`lora_target_modules` {model_args.lora_target_modules} match no layer of "
            f"{model_args.model_name_or_path}; name its linear layers (q_proj, v_proj, ...) or `all-linear`."
        ) from None
    model.config.use_cache = True
    if args.gradient_checkpointing:
        enable_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    if acc.distributed_type == DistributedType.DEEPSPEED and args.gradient_accumulation_steps > 1:
        # Under DeepSpeed every backward pass with synced gradients steps the engine; our accumulation would
        # take an optimizer step per micro-batch.
        raise ConfigError(
            "`gradient_accumulation_steps` > 1 is not supported under DeepSpeed yet; raise "
            "`per_device_train_batch_size` instead, or use the FSDP2 config."
        )
    try:  # ZeRO-3 without a DataLoader: our batch sizes and clipping, not `auto`
        configure_batch_sizes(acc, args.per_device_train_batch_size, args.gradient_accumulation_steps)
        configure_gradient_clipping(acc, args.max_grad_norm)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    model, optimizer = acc.prepare(model, optimizer)
    sharding = Sharding.of(model)
    with Sharding.frozen_load():
        reference = kl_reference(args, model_args, acc.device)
    measured = any(spec.samples_training_weights for spec in inputs.generator_specs)
    if args.max_kl is not None and (reference is None or not measured):
        raise ConfigError(
            "`max_kl` needs KL to be measured: LoRA (or `kl_to_base: on`) and the policy sampling in the training "
            "process (engine `local` or `vllm`)."
        )
    base_state = None
    if args.sft_from == "base":  # ZeRO-3 partitions are gathered, and rank 0 keeps the copy; else every rank does
        base_state = sharding.trainable_copy(model, acc.is_main_process)
    return Policy(model, optimizer, sharding, reference, base_state)


def tracker_config(args, model_args) -> dict:
    """The run's config as the trackers take it: every recipe key, and TRL's model keys (model, dtype, LoRA,
    quantisation) under `model/`, each a number, text or boolean.

    >>> from trl import ModelConfig
    >>> from rs_trainer.config import RSConfig
    >>> config = tracker_config(RSConfig(num_rounds=2), ModelConfig(model_name_or_path="m", use_peft=True, lora_r=8))
    >>> config["num_rounds"], config["model/model_name_or_path"], config["model/lora_r"], config["model/use_peft"]
    (2, 'm', 8, True)
    """

    def plain(v):
        return v if isinstance(v, (int, float, str, bool)) else str(v)

    flat = {k: plain(v) for k, v in args.to_dict().items()}
    flat.update({f"model/{k}": plain(v) for k, v in dataclasses.asdict(model_args).items()})
    return flat


def write_run_config(inputs: RunInputs) -> None:
    """`run_config.json`, the first file of a run, once every check has passed; trackers started."""
    acc = inputs.accelerator
    if acc.is_main_process:
        from rs_trainer.run.io import write_json

        inputs.files.root.mkdir(parents=True, exist_ok=True)
        write_json(inputs.files.run_config, run_config(inputs.args, inputs.model_args))
    acc.wait_for_everyone()
    if acc.log_with:
        acc.init_trackers(
            "rs_trainer",
            config=tracker_config(inputs.args, inputs.model_args),
            init_kwargs={"wandb": {"name": inputs.args.run_name or inputs.files.root.name}},
        )


def check_refresh_recipe(args, num_processes: int) -> None:
    """`reward_model_refresh`'s recipe parses, and can train here, before the first round rather than after it."""
    from rs_trainer.trainer.refresh import refresh_data_args

    if num_processes > 1:
        raise ConfigError(
            f"`reward_model_refresh` trains its reward models in one process, and this run has {num_processes}; "
            "run on one process, or train reward models between runs with `rs-trainer reward-model`."
        )
    try:
        data_args = refresh_data_args(args.reward_model_refresh)
    except (OSError, TypeError, ValueError) as err:
        raise ConfigError(f"`reward_model_refresh` {args.reward_model_refresh}: {first_line(err)}") from None
    if data_args.same_form_questions and args.dataset_name != "builtin:arithmetic":
        raise ConfigError(
            f"`reward_model_refresh` {args.reward_model_refresh} measures same-form accuracy on arithmetic "
            f"questions (`same_form_questions`), and this run is on {args.dataset_name}; set it to 0 there."
        )


def check_rationalization_hint(hint: str, row: dict) -> None:
    fields = {name for _, name, _, _ in string.Formatter().parse(hint) if name}
    missing = sorted(fields - set(row))
    if missing or not fields:
        raise ConfigError(
            f"`rationalization_hint` {hint!r} must name ground-truth columns of the dataset in braces (such as "
            f"{{answer}}); {missing or 'none'} are not among {sorted(set(row) - {'prompt', 'prompt_id'})}."
        )


def kl_reference(args, model_args, device):
    """What drift is measured against: "adapter" (LoRA disabled), a frozen base model (`kl_to_base: on` without
    LoRA), or None (off)."""
    mode = args.kl_to_base
    if mode == "off" or (mode == "auto" and not model_args.use_peft):
        return None
    if model_args.use_peft:
        return "adapter"
    from rs_trainer.generators.local import load_frozen

    model, _ = load_frozen(model_args.model_name_or_path, model_args, device)
    return model


def setup_generators(args, files: RunLayout, tokenizer, use_peft: bool) -> tuple[list, dict, dict]:
    """Every generator checked before anything is sampled: (specs, each one's sample indices, ready endpoints)."""
    from rs_trainer.generators.checks import check_generators, sample_ranges

    specs = args.generator_specs()
    endpoints = check_generators(
        specs,
        tokenizer,
        args.save_checkpoints,
        use_peft,
        first_params=lambda spec: sampling_params(args, files, spec, 0),
    )
    return specs, sample_ranges(specs), endpoints


def load_model_tokenizer(name: str):
    """The model's folder and tokenizer; a folder or hub id that holds no model is refused by name."""
    try:
        path = resolve_model_path(name)
        check_model_folder(path)
        from transformers import AutoConfig

        AutoConfig.from_pretrained(path)
        return path, load_tokenizer(path)
    except (OSError, ValueError) as err:
        reason = first_line(err)
        raise ConfigError(
            f"`model_name_or_path` {name} could not be loaded ({reason}); name a folder holding config.json, "
            "weights and a tokenizer, a hub id available offline, or `embedded:SmolLM2-135M-Instruct`."
        ) from None


def load_eval_sets(args) -> dict[str, list[dict]]:
    """The prompts of each evaluation set of `eval_splits`: `heldout` from `dataset_test_split` (of
    `eval_dataset_name` where given, at most `max_eval_prompts`), the others from the built-in task."""
    sets = {}
    for split in args.evaluation_splits():
        if split == HELDOUT:
            prompts = data.load_prompts(args, args.dataset_test_split, args.eval_dataset_name, eval=True)
            sets[split] = prompts[: args.max_eval_prompts] if args.max_eval_prompts else prompts
        else:
            sets[split] = data.load_prompts(args, split)
    ids = [p["prompt_id"] for prompts in sets.values() for p in prompts]
    if len(ids) != len(set(ids)):  # the sets' token ids are kept by prompt id
        twice = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(
            f"prompt_id {twice!r} is in two evaluation sets of `eval_splits` {list(sets)}; ids must be unique."
        )
    return sets


def encode_and_check_lengths(args, tokenizer, model_path, *prompt_lists) -> tuple[list[dict], int, int]:
    """Each list's token ids by prompt id (as rendered for generation), the model's context and `max_len`; a
    prompt that leaves no room for a completion is refused by id."""
    from transformers import AutoConfig

    context = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    max_len = args.max_length or context or 4096
    max_new = max(max(args.max_completion_length), args.eval_max_new_tokens)
    encoded = []
    for prompts in prompt_lists:
        ids = encode_prompts(tokenizer, prompts)
        check_prompt_lengths(prompts, ids, max_new, context)
        if prompts:
            longest = max(range(len(ids)), key=lambda i: len(ids[i]))
            if len(ids[longest]) >= max_len:
                raise ConfigError(
                    f"`max_length` ({max_len}) leaves no room for a completion after prompt "
                    f"{prompts[longest]['prompt_id']!r} ({len(ids[longest])} tokens); raise it above the longest "
                    "prompt plus `max_completion_length`, or leave it unset to use the model's context."
                )
        encoded.append({p["prompt_id"]: seq for p, seq in zip(prompts, ids, strict=True)})
    return encoded, context or 10**9, max_len


def sampling_length(args, specs, prompt_ids: dict[str, list[int]], context: int, eval_ids=(), hinted_ids=()) -> int:
    """The longest sequence the run asks a generator for, at most the model's context: its longest training prompt
    plus the longest completion of any round or generator (`max_completion_length`), its longest evaluation prompt
    (`eval_ids`) plus `eval_max_new_tokens`, and its longest hinted prompt (`hinted_ids`, STaR's rationalization)
    plus the longest completion, since evaluation and rationalization decode through the policy's generator. An
    in-process vLLM engine is sized to it (`max_model_len`): sized to the context instead, a Llama-3.1 engine would
    reserve KV cache for 131,072 tokens before its first request.

    >>> from types import SimpleNamespace as NS
    >>> sampling_length(NS(max_completion_length=[64, 256]), [NS(max_completion_length=None)], {"a": [1] * 30}, 4096)
    286
    >>> sampling_length(NS(max_completion_length=[64]), [NS(max_completion_length=512)], {"a": [1] * 30}, 300)
    300
    >>> sampling_length(NS(max_completion_length=[64], eval_max_new_tokens=32), [], {"a": [1] * 30}, 4096, [[1] * 90])
    122
    """
    completions = [*args.max_completion_length, *(s.max_completion_length for s in specs if s.max_completion_length)]
    longest = max((len(ids) for ids in [*prompt_ids.values(), *hinted_ids]), default=0) + max(completions)
    if eval_ids:
        longest = max(longest, max(len(ids) for ids in eval_ids) + args.eval_max_new_tokens)
    return min(longest, context)


def check_output_dir(args, model_args, accelerator, files: RunLayout) -> None:
    """A folder, new or holding a run of the same config; `overwrite_output_dir` clears one of another config."""
    root = files.root
    if root.is_file():
        raise ConfigError(f"`output_dir` {root} is a file; name a folder (new or holding a run).")
    path = files.run_config
    if not path.exists():
        return
    changed = resume_blockers(json.loads(path.read_text()), run_config(args, model_args))
    if changed and not args.overwrite_output_dir:
        raise ConfigError(
            f"{root} holds a run with a different config (changed: {', '.join(changed)}), so it cannot "
            "be resumed (only `num_rounds` and the memory keys may change: docs/options.md#resuming); choose "
            "another `output_dir` or pass `--overwrite_output_dir` to start over."
        )
    if args.overwrite_output_dir:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for r in files.rounds():
                shutil.rmtree(files.round(r))
            for path in files.run_files():
                path.unlink(missing_ok=True)
        accelerator.wait_for_everyone()


def run_banner(args, model_args, processes: int) -> str:
    """The run's first line on the console: what trains on what, how much, and where the outputs go.

    >>> from types import SimpleNamespace as NS
    >>> run_banner(NS(dataset_name="builtin:arithmetic", num_rounds=2, prompts_per_round=96, num_generations=8,
    ...               output_dir="outputs/x"), NS(model_name_or_path="m", use_peft=True), 1)
    'rs_trainer: m (LoRA) on builtin:arithmetic: 2 rounds of 96 prompts x 8 samples, 1 process; outputs in outputs/x'
    """
    prompts = args.prompts_per_round or "all"
    rounds = f"{args.num_rounds} round{'s' if args.num_rounds != 1 else ''}"
    return (
        f"rs_trainer: {model_args.model_name_or_path} ({'LoRA' if model_args.use_peft else 'full'}) on "
        f"{args.dataset_name}: {rounds} of {prompts} prompts x {args.num_generations} samples, {processes} "
        f"process{'es' if processes != 1 else ''}; outputs in {args.output_dir}"
    )
