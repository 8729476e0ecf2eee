"""`RejectionSamplingTrainer`: setup, the round loop, save, cleanup. Orchestration only: generation, scoring,
selection and the loss live in their own pure modules.

One round (read `train` top to bottom):
  prompts -> generate N each -> score -> select -> SFT on the selected set -> evaluate -> save
and the next round samples from the model this round trained.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm

from rs_trainer.config import AUTO, NON_SEMANTIC_KEYS, ConfigError, RSConfig, config_changes, first_line
from rs_trainer.phases import filters, selection
from rs_trainer.phases.generation import SamplingParams, check_prompt_lengths, encode_prompts, generate
from rs_trainer.phases.generators.local import release as release_memory
from rs_trainer.phases.generators.openai_client import GeneratorError
from rs_trainer.phases.sft import (
    build_example,
    plan_steps,
    reset_optimizer,
    restore_trainable,
    tokenize_completion,
    train_steps,
    trainable_state,
)
from rs_trainer.phases.temperature import choose_temperature, probe_metrics, probe_prompts
from rs_trainer.rewards import resolve_scorers, score
from rs_trainer.run import data, resume, seeds
from rs_trainer.run.deepspeed import (
    configure_batch_sizes,
    configure_gradient_clipping,
    full_state_gathered,
    is_zero3,
    outside_zero3_init,
    restore_trainable_gathered,
    trainable_state_gathered,
)
from rs_trainer.run.io import append_jsonl, atomic_dir, recover_dir, write_atomic, write_json, write_jsonl
from rs_trainer.run.layout import TRAIN_METRICS, RunLayout
from rs_trainer.run.metrics import round_metrics, summary_table
from rs_trainer.run.models import check_model_folder, load_policy, load_tokenizer, resolve_model_path
from rs_trainer.run.progress import progress_bar
from rs_trainer.run.ranks import check_shared_storage, local_device, make_accelerator
from rs_trainer.run.report import markdown_table, plot_report, sample_table
from rs_trainer.run.sharding import fsdp_units, full_weights, trainable_full_state
from rs_trainer.tools.export import sft_rows


class RoundClock:
    """A round's timings: seconds per phase (`timing/<phase>` in the metrics) and when each phase began."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.started: dict[str, float] = {}  # wall-clock time, to compare with rows' `generated_at`
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        start, self.started[name] = time.perf_counter(), time.time()
        yield
        self.timings[name] = time.perf_counter() - start

    def elapsed(self) -> float:
        return time.perf_counter() - self._start


def by_key(rows: list[dict]) -> list[dict]:
    """Rows in (prompt_id, sample_index) order, whichever rank they came from."""
    return sorted(rows, key=lambda s: (s["prompt_id"], s["sample_index"]))


def gather_to_main(rows: list, accelerator: Accelerator) -> list | None:
    """Every rank's `rows` concatenated on the main process (None elsewhere): unlike `gather_object`, the other
    ranks never hold the whole round's text."""
    if accelerator.num_processes == 1:
        return list(rows)
    import torch.distributed as dist

    parts = [None] * accelerator.num_processes if accelerator.is_main_process else None
    dist.gather_object(rows, parts, dst=0)
    return [row for part in parts for row in part] if accelerator.is_main_process else None


class RejectionSamplingTrainer:
    def __init__(self, args: RSConfig, model_args, accelerator: Accelerator | None = None):
        self.args = args
        self.model_args = model_args
        self.accelerator = accelerator or make_accelerator(args)
        self.output_dir = Path(args.output_dir)
        self.files = RunLayout(self.output_dir)  # every path of the run's output folder
        self.history: list[dict] = []
        self.pool: list[dict] = []  # selected samples of earlier rounds, for `pool_previous_rounds`

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Validate everything that can be validated, then load. Nothing is written before all checks pass."""
        args, acc = self.args, self.accelerator
        set_seed(args.seed)
        self.train_prompts = data.load_prompts(args, args.dataset_train_split)
        self.eval_prompts = self._load_eval_prompts()
        self.prompt_by_id = {p["prompt_id"]: p for p in self.train_prompts}
        if args.rationalize:
            self._check_rationalization_hint()
        if args.prompts_per_round and args.prompts_per_round > len(self.train_prompts):
            raise ConfigError(
                f"`prompts_per_round` ({args.prompts_per_round}) is more than the {len(self.train_prompts)} prompts "
                f"in {args.dataset_name} [{args.dataset_train_split}]; lower it, or leave it unset to use them all."
            )
        args.check_selection_size(args.prompts_per_round or len(self.train_prompts))
        every_prompt = self.train_prompts + self.eval_prompts
        reward_device = local_device(args.reward_model_device, acc.num_processes, acc.device)
        with outside_zero3_init():  # reward models are whole on each rank, never ZeRO-3 partitions
            self.scorers, self.weights = resolve_scorers(
                "reward_funcs",
                args.reward_funcs,
                args.reward_weights,
                reward_device,
                every_prompt,
                args.dataset_name,
            )
            # Success (held-out accuracy, pass@k) is judged by `eval_reward_funcs` where given: a reward model
            # trains, the verifier measures.
            self.eval_scorers, self.eval_weights = self.scorers, self.weights
            if args.eval_reward_funcs:
                self.eval_scorers, self.eval_weights = resolve_scorers(
                    "eval_reward_funcs",
                    args.eval_reward_funcs,
                    None,
                    reward_device,
                    every_prompt,
                    args.dataset_name,
                )

        self.model_path, self.tokenizer = self._load_tokenizer()
        self._setup_generators()
        if AUTO in args.temperature and not any(s.is_policy and s.temperature is None for s in self.generator_specs):
            raise ConfigError(
                "`temperature: auto` probes the policy at the round's temperature, but no generator is the policy "
                "without its own `temperature`; list one, or give `temperature` numbers."
            )
        self.prompt_ids = self._encode_and_check_lengths(self.train_prompts)
        self.eval_prompt_ids = self._encode_and_check_lengths(self.eval_prompts)
        check_shared_storage(acc, self.output_dir)  # every later decision reads `output_dir`, on every rank
        self._check_output_dir()

        from trl import get_peft_config

        try:
            model, _ = load_policy(self.model_args, get_peft_config(self.model_args))
        except ValueError as err:
            if "target_modules" not in str(err) and "Target modules" not in str(err):
                raise
            raise ConfigError(
                f"`lora_target_modules` {self.model_args.lora_target_modules} match no layer of "
                f"{self.model_args.model_name_or_path}; name its linear layers (q_proj, v_proj, ...) or `all-linear`."
            ) from None
        model.config.use_cache = True
        if args.gradient_checkpointing:  # non-reentrant: works with frozen inputs (LoRA) and with FSDP2
            # transformers 5.23 renamed it (the old name warns); older 5.x releases have only the old one.
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
        self.model, self.optimizer = acc.prepare(model, optimizer)
        with outside_zero3_init():
            self.kl_reference = self._kl_reference()
        measured = any(spec.is_policy and spec.engine == "local" for spec in self.generator_specs)
        if args.max_kl is not None and (self.kl_reference is None or not measured):
            raise ConfigError(
                "`max_kl` needs KL to be measured: LoRA (or `kl_to_base: on`) and the policy sampling in-process."
            )
        self.base_state = None
        if args.sft_from == "base" and is_zero3(self.model):  # partitions: gathered, rank 0 keeps the copy
            self.base_state = trainable_state_gathered(self.model, keep=acc.is_main_process)
        elif args.sft_from == "base":
            self.base_state = trainable_state(self.model)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.files.run_config, self._run_config())
        acc.wait_for_everyone()
        if acc.log_with:
            flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in args.to_dict().items()}
            acc.init_trackers("rs_trainer", config=flat)

    def _check_rationalization_hint(self) -> None:
        import string

        fields = {name for _, name, _, _ in string.Formatter().parse(self.args.rationalization_hint) if name}
        missing = sorted(fields - set(self.train_prompts[0]))
        if missing or not fields:
            raise ConfigError(
                f"`rationalization_hint` {self.args.rationalization_hint!r} must name ground-truth columns of the "
                f"dataset in braces (such as {{answer}}); {missing or 'none'} are not among "
                f"{sorted(set(self.train_prompts[0]) - {'prompt', 'prompt_id'})}."
            )

    def _kl_reference(self):
        """What `measure_drift` compares the policy with: "adapter" (LoRA disabled), a frozen base model
        (`kl_to_base: on` without LoRA), or None (off)."""
        mode = self.args.kl_to_base
        if mode == "off" or (mode == "auto" and not self.model_args.use_peft):
            return None
        if self.model_args.use_peft:
            return "adapter"
        from rs_trainer.phases.generators.local import load_frozen

        model, _ = load_frozen(self.model_args.model_name_or_path, self.model_args, self.accelerator.device)
        return model

    def _setup_generators(self) -> None:
        """Check every generator before anything is sampled; `self.sample_ranges` gives each its sample indices."""
        from rs_trainer.phases.generators.setup import check_generators, sample_ranges

        self.generator_specs = self.args.generator_specs()
        self.sample_ranges = sample_ranges(self.generator_specs)
        self.endpoints = check_generators(
            self.generator_specs,
            self.tokenizer,
            self.args.save_checkpoints,
            self.model_args.use_peft,
            first_params=lambda spec: self.sampling_params(spec, 0),
        )

    def _load_tokenizer(self):
        """The model's folder and tokenizer; a folder or hub id that holds no model is refused by name."""
        name = self.model_args.model_name_or_path
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

    def _load_eval_prompts(self) -> list[dict]:
        args = self.args
        if args.dataset_test_split is None:
            return []
        prompts = data.load_prompts(args, args.dataset_test_split, args.eval_dataset_name, eval=True)
        return prompts[: args.max_eval_prompts] if args.max_eval_prompts else prompts

    def _encode_and_check_lengths(self, prompts: list[dict]) -> dict[str, list[int]]:
        ids = encode_prompts(self.tokenizer, prompts)
        from transformers import AutoConfig

        context = getattr(AutoConfig.from_pretrained(self.model_path), "max_position_embeddings", None)
        check_prompt_lengths(
            prompts, ids, max(max(self.args.max_completion_length), self.args.eval_max_new_tokens), context
        )
        self.context = context or 10**9
        self.max_len = self.args.max_length or context or 4096
        if prompts:
            longest = max(range(len(ids)), key=lambda i: len(ids[i]))
            if len(ids[longest]) >= self.max_len:
                raise ConfigError(
                    f"`max_length` ({self.max_len}) leaves no room for a completion after prompt "
                    f"{prompts[longest]['prompt_id']!r} ({len(ids[longest])} tokens); raise it above the longest "
                    "prompt plus `max_completion_length`, or leave it unset to use the model's context."
                )
        return {p["prompt_id"]: seq for p, seq in zip(prompts, ids, strict=True)}

    def _run_config(self) -> dict:
        import dataclasses

        rs = {k: v for k, v in self.args.to_dict().items() if k not in NON_SEMANTIC_KEYS}
        return {"rs": rs, "model": dataclasses.asdict(self.model_args)}

    def _check_output_dir(self) -> None:
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ConfigError(f"`output_dir` {self.output_dir} is a file; name a folder (new or holding a run).")
        path = self.files.run_config
        if not path.exists():
            return
        old = json.loads(path.read_text())
        new = json.loads(json.dumps(self._run_config(), default=str))
        old_model = old.get("model", {})
        changed = [f"rs.{k}" for k in config_changes(old.get("rs", {}), new["rs"])] + sorted(
            f"model.{k}" for k in set(old_model) | set(new["model"]) if old_model.get(k) != new["model"].get(k)
        )
        if changed and not self.args.overwrite_output_dir:
            raise ConfigError(
                f"{self.output_dir} holds a run with a different config (changed: {', '.join(changed)}), so it cannot "
                "be resumed; choose another `output_dir` or pass `--overwrite_output_dir` to start over."
            )
        if self.args.overwrite_output_dir:
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                for r in self.files.rounds():
                    shutil.rmtree(self.files.round(r))
                for path in self.files.run_files():
                    path.unlink(missing_ok=True)
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ the round loop
    def train(self) -> list[dict]:
        """Every round not yet finished in `output_dir`; returns the rounds' metrics."""
        self.base_accuracy = self.evaluate_base()
        for r in range(self.resume(), self.args.num_rounds):
            if not self.run_round(r):
                break
        self.log("\n" + summary_table(self.history))
        if self.accelerator.is_main_process:
            write_json(self.files.summary, self.history)
        return self.history

    def run_round(self, r: int) -> bool:
        """One round: sample, score and select (or read them back), train, evaluate, report. Returns False when
        the run stops here (`max_kl_action: stop`).

        Data stages, each with one name: `rows` (this rank's rows of the round, every generator's), `candidates`
        (after the filters; inside `select`), `selected` (the selected rows, on every rank) and `train_set` (what
        SFT trains on: `selected`, or with `pool_previous_rounds` every round's)."""
        args = self.args
        clock = RoundClock()
        set_seed(args.seed + r)  # dropout and any other global draw: the same path when resumed
        rows, selected, every_row = self.sample_score_select(r, clock)
        with clock.phase("kl"):
            drift = self.measure_drift(rows, r)
        if self.drifted_too_far(r, drift):
            return False
        self.pool.extend(selected)
        train_set = self.pool if args.pool_previous_rounds else selected
        sft_stats = self.train_round(r, train_set, clock)
        with clock.phase("eval"):
            evaluation = self.evaluate() if self.eval_prompts else {"eval/accuracy": None, "eval/reward": None}
        metrics = self.collect_metrics(r, every_row, selected, {**sft_stats, **drift, **evaluation}, clock)
        self.history.append(metrics)
        self.report(r, every_row, metrics)
        self.log(summary_table(self.history[-1:]))
        return True

    def sample_score_select(self, r: int, clock: RoundClock) -> tuple[list[dict], list[dict], list[dict] | None]:
        """This rank's rows of the round, scored and marked; the selected rows, on every rank; and every row of the
        round on the main process (None on the others). A round that got as far as its `generations.jsonl` before
        a kill is read back, not sampled again."""
        acc = self.accelerator
        saved = resume.scored_rows(self.files, r)
        if saved is not None:
            every_row = saved if acc.is_main_process else None
            return (
                data.shard(saved, acc.process_index, acc.num_processes),
                [s for s in saved if s["selected"]],
                every_row,
            )
        prompts = data.draw_round_prompts(self.train_prompts, self.args.prompts_per_round, self.args.seed, r)
        if self.args.for_round("temperature", r) == AUTO:
            with clock.phase("temperature_probe"):
                self.probe_temperature(prompts, r)
        with clock.phase("generate"):
            rows = self.generate_samples(prompts, r, clock)
        release_memory()  # the KV caches, before the reward model scores
        with clock.phase("score"):
            rows = self.score_samples(rows)
        with clock.phase("select"):
            self.select_samples(rows, r)
        if self.args.rationalize:
            with clock.phase("rationalize"):
                rows += self.rationalize(rows, r)
        every_row = self.save_generations(r, rows)
        return rows, by_key(gather_object([s for s in rows if s["selected"]])), every_row

    def drifted_too_far(self, r: int, drift: dict) -> bool:
        """`max_kl`: warn, or (`max_kl_action: stop`) end the run before this round's SFT."""
        kl, limit = drift.get("rs/kl_ref"), self.args.max_kl
        if kl is None or limit is None or kl <= limit:
            return False
        message = f"round {r}: KL to the base model {kl:.3f} passed `max_kl` {limit}"
        if self.args.max_kl_action == "stop":
            self.log(message + "; stopping before this round's SFT (`max_kl_action: stop`).")
            return True
        self.log(message + ".")
        return False

    def train_round(self, r: int, train_set: list[dict], clock: RoundClock) -> dict:
        """SFT on `train_set` and the checkpoint; a round killed after its save loads that checkpoint instead."""
        sft_stats = resume.trained_round(self.files, r)
        if sft_stats is not None:
            resume.load_weights(self.accelerator.unwrap_model(self.model), self.files.checkpoint(r))
            return sft_stats
        set_seed(self.args.seed + r)  # the same draws (dropout) whether the round's samples were made or read
        with clock.phase("sft"):
            sft_stats = self.sft(train_set, r)
        with clock.phase("save"):
            self.save_checkpoint(self.files.checkpoint(r), sft_stats)
        return sft_stats

    def collect_metrics(
        self, r: int, rows: list[dict] | None, selected: list[dict], measured: dict, clock: RoundClock
    ) -> dict:
        """The round's metrics, computed on the main process from every row of the round (`rows`, None on the
        other ranks) and shared with every rank: sample and selection statistics, per generator too, the
        temperature and its probe, `measured` (SFT, drift and evaluation) and the timings."""
        args, acc = self.args, self.accelerator
        metrics = None
        if acc.is_main_process:
            keys = {(s["prompt_id"], s["sample_index"]) for s in selected}
            sampled = [s for s in rows if not s.get("rationalized")]  # hinted samples distort pass@k
            metrics = {"round": r, **round_metrics(sampled, keys, args.pass_threshold)}
            if args.rationalize:
                metrics["rs/rationalized"] = sum(bool(s.get("rationalized") and s["selected"]) for s in rows)
                metrics["rs/rationalization_prompts"] = len({s["prompt_id"] for s in rows if s.get("rationalized")})
            metrics["rs/filtered_out"] = sum(s.get("filtered_out", False) for s in rows)
            probe = self.files.temperature_probe(r)
            auto = args.for_round("temperature", r) == AUTO
            metrics["rs/temperature"] = self.round_temperature(r) if probe.exists() or not auto else None
            if probe.exists():
                found = json.loads(probe.read_text())
                metrics.update(probe_metrics(found["table"], found["temperature"], found["extra_tokens"]))
            before = self.history[-1]["eval/accuracy"] if self.history else self.base_accuracy
            metrics.update({**measured, "eval/accuracy_before": before})
            metrics.update({f"timing/{k}": v for k, v in clock.timings.items()})
            for spec in self.generator_specs:  # rows sampled in this phase: none reused, none from a probe
                seconds = clock.timings.get(f"generate/{spec.name}")
                since = clock.started.get(f"generate/{spec.name}", float("inf"))
                new_tokens = sum(
                    s["completion_tokens"]
                    for s in rows
                    if s.get("generator", "policy") == spec.name and s.get("generated_at", 0) >= since
                )
                if seconds and new_tokens:
                    metrics[f"gen/{spec.name}/tokens_per_s"] = new_tokens / seconds
            metrics["timing/round"] = clock.elapsed()
        return broadcast_object_list([metrics])[0]  # every rank keeps the main process's history

    def resume(self) -> int:
        """Pick up the finished rounds of an earlier run in `output_dir`; return the first round still to run."""
        acc = self.accelerator
        if acc.is_main_process:  # a checkpoint swap cut short by a kill is finished or undone before anyone reads
            for r in self.files.rounds():
                recover_dir(self.files.checkpoint(r))
        acc.wait_for_everyone()
        self.history = resume.finished_rounds(self.files)[: self.args.num_rounds]
        if not self.history:
            return 0
        last = len(self.history) - 1
        checkpoint = self.files.checkpoint(last)
        if not checkpoint.exists():
            raise ConfigError(f"Cannot resume from round {last}: {checkpoint} is missing (`save_checkpoints` false?).")
        # The next round samples from the model the last round trained (with `sft_from: base` too).
        resume.load_weights(self.accelerator.unwrap_model(self.model), checkpoint)
        for r in range(len(self.history)):
            self.pool.extend(s for s in resume.scored_rows(self.files, r) if s["selected"])
        self.log(f"resuming {self.output_dir}: rounds 0..{last} are finished")
        return len(self.history)

    def evaluate_base(self) -> float | None:
        """Held-out accuracy of the base model, computed once per run and kept in `base_eval.json`."""
        path = self.files.base_eval
        if not self.eval_prompts:
            return None
        if path.exists():
            return json.loads(path.read_text())["eval/accuracy"]
        evaluation = self.evaluate()
        self.log(f"base model: held-out greedy accuracy {evaluation['eval/accuracy']}")
        self.accelerator.log({k: v for k, v in evaluation.items() if v is not None}, step=0)
        if self.accelerator.is_main_process:
            write_json(path, evaluation)
        return evaluation["eval/accuracy"]

    # ------------------------------------------------------------------ phases
    def generate_samples(self, prompts: list[dict], r: int, clock: RoundClock) -> list[dict]:
        """This rank's share of the round's samples, from every generator in turn.

        Each prompt gets its N samples from each generator, under sample indices that follow one another in the
        recipe's order (`self.sample_ranges`), and every row says which generator wrote it. Rows already on disk (an
        interrupted run) are reused; new rows are appended to this rank's shard file as they finish, so a kill
        loses at most one batch or request. The work is spread over the ranks per generator, and each rank then
        takes all the rows of its own prompts, whoever wrote them, so the per-prompt filters see every sample."""
        args, acc = self.args, self.accelerator
        done = resume.generated_rows(self.files, r, self.sample_ranges)
        acc.wait_for_everyone()  # every rank has read the same `done` before any rank appends new rows
        reused = sum(len(rows) for rows in done.values())
        if reused:
            self.log(f"round {r}: reusing {reused} prompts' generations from disk")
        shard_file = self.files.shard(r, acc.process_index)
        for g, spec in enumerate(self.generator_specs):
            missing = [p for p in prompts if p["prompt_id"] not in done[spec.name]]
            if not missing:
                continue
            todo = data.shard(missing, acc.process_index, acc.num_processes)
            n = spec.num_generations

            def on_batch(rows: list[dict], spec=spec) -> None:
                self.append_rows(shard_file, rows, spec, r)
                bar.update(len(rows))

            desc = f"round {r} generate" + (f" [{spec.name}]" if len(self.generator_specs) > 1 else "")
            # Servers seed each request by (seed, prompt, sample), so their rows do not depend on the rank.
            rank = acc.process_index if spec.engine == "local" else 0
            seed = seeds.sampling_seed(args.seed, r, seeds.generator_stream(g), rank)
            with clock.phase(f"generate/{spec.name}"), self.open_generator(spec, r) as generator:
                error = None
                with self.progress(len(todo) * n, desc, "samples") as bar:
                    try:
                        ids = [self.prompt_ids[p["prompt_id"]] for p in todo]
                        generator.generate(todo, ids, n, self.sampling_params(spec, r), seed=seed, on_batch=on_batch)
                    except GeneratorError as err:  # every rank stops, not only the one whose requests failed
                        error = str(err)
                errors = [e for e in gather_object([error]) if e]
                if errors:
                    raise GeneratorError(errors[0])
            del generator
        on_disk = resume.generated_rows(self.files, r, self.sample_ranges)
        mine = data.shard(prompts, acc.process_index, acc.num_processes)
        return [
            {**p, **row} for p in mine for spec in self.generator_specs for row in on_disk[spec.name][p["prompt_id"]]
        ]

    def measure_drift(self, rows: list[dict], r: int) -> dict:
        """`rs/kl_ref` (nats per sample) and `rs/entropy` (nats per token) of the policy on its own samples of the
        round, before this round's SFT (the weights that sampled them); see `rs_trainer.phases.divergence`. `rows`
        are this rank's rows of the round, of which a seeded draw of `kl_samples` (split over the ranks) is used."""
        from rs_trainer.phases.divergence import kl_and_entropy

        acc = self.accelerator
        if self.kl_reference is None:
            return {}
        own = {spec.name for spec in self.generator_specs if spec.is_policy and spec.engine == "local"}
        mine = [s for s in rows if s.get("generator", "policy") in own]
        share = -(-self.args.kl_samples // acc.num_processes)  # ceil
        if self.args.kl_samples and len(mine) > share:
            import random

            rng = random.Random(f"kl:{seeds.round_seed(self.args.seed, r)}:{acc.process_index}")
            mine = [mine[i] for i in sorted(rng.sample(range(len(mine)), share))]
        examples = self.training_examples(mine)
        ref = None if self.kl_reference == "adapter" else self.kl_reference
        with full_weights(acc.unwrap_model(self.model)) as model:  # ranks run different numbers of batches
            sums = kl_and_entropy(model, examples, self.tokenizer.pad_token_id, ref_model=ref) if examples else {}
        total = {
            k: sum(part.get(k, 0) for part in gather_object([sums]))
            for k in ("kl_sum", "entropy_sum", "tokens", "samples")
        }
        if not total["samples"]:
            return {}
        return {
            "rs/kl_ref": total["kl_sum"] / total["samples"],
            "rs/entropy": total["entropy_sum"] / max(total["tokens"], 1),
            "rs/kl_samples": total["samples"],
        }

    def round_temperature(self, r: int) -> float:
        """The round's temperature: the recipe's, or with `auto` the one its probe chose (read back when resumed).
        Before the probe has chosen, the grid's first value: only the endpoint checks that precede sampling (and
        the probe's own server) see it."""
        value = self.args.for_round("temperature", r)
        if value != AUTO:
            return value
        path = self.probe_file(r)
        return json.loads(path.read_text())["temperature"] if path.exists() else self.args.temperature_grid[0]

    def probe_file(self, r: int) -> Path:
        return self.files.temperature_probe(r)

    def probe_temperature(self, prompts: list[dict], r: int) -> None:
        """`temperature: auto`: sample `temperature_probe_prompts` of the round's prompts N times at each
        temperature of `temperature_grid` with the policy, score them, and keep the temperature with the best
        expected best-of-N reward (`rs_trainer.phases.temperature`), in `temperature_probe.json`. The probe prompts'
        rows at that temperature are kept as their rows of the round. A probe cut short by a kill runs again."""
        args, acc = self.args, self.accelerator
        path = self.probe_file(r)
        if path.exists():
            return
        spec = next(s for s in self.generator_specs if s.is_policy and s.temperature is None)
        n = spec.num_generations
        chosen = probe_prompts(prompts, args.temperature_probe_prompts, args.seed, r)
        todo = data.shard(chosen, acc.process_index, acc.num_processes)
        ids = [self.prompt_ids[p["prompt_id"]] for p in todo]
        by_id = {p["prompt_id"]: p for p in todo}
        raw: dict[float, list[dict]] = {}
        found = []  # (temperature, prompt_id, reward, completion tokens) of this rank's probe samples
        with self.open_generator(spec, r) as generator:
            for i, t in enumerate(args.temperature_grid):
                seed = seeds.sampling_seed(args.seed, r, seeds.probe_stream(i), acc.process_index)
                params = self.sampling_params(spec, r, temperature=t)
                with self.progress(len(todo) * n, f"round {r} temperature probe T={t:g}", "samples") as bar:
                    raw[t] = generator.generate(todo, ids, n, params, seed=seed) if todo else []
                    bar.update(len(raw[t]))
                scored = self.score_samples([{**by_id[row["prompt_id"]], **row} for row in raw[t]])
                found += [(t, s["prompt_id"], s["reward"], s["completion_tokens"]) for s in scored]
            del generator
        everything = gather_object(found)
        rewards: dict[float, dict[str, list[float]]] = {t: {} for t in args.temperature_grid}
        for t, prompt_id, reward, _ in everything:
            rewards[t].setdefault(prompt_id, []).append(reward)
        best, table = choose_temperature(rewards, n)
        extra = sum(tokens for t, _, _, tokens in everything if t != best)
        self.log(
            f"round {r}: temperature probe on {len(chosen)} prompts: "
            + ", ".join(f"T={row['temperature']:g} best-of-{n} {row['best_of_n']:.3f}" for row in table)
            + f" -> {best:g}"
        )
        if acc.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"temperature": best, "table": table, "extra_tokens": extra, "prompts": len(chosen)})
        acc.wait_for_everyone()
        # The probe prompts' samples at the chosen temperature are theirs for the round: not generated again.
        shard_file = self.files.shard(r, acc.process_index)
        self.append_rows(shard_file, raw[best], spec, r)
        acc.wait_for_everyone()

    def append_rows(self, shard_file: Path, rows: list[dict], spec, r: int) -> None:
        """Generated rows into this rank's shard file, keyed by (round, prompt_id, generator, sample_index)."""
        offset, now = self.sample_ranges[spec.name].start, time.time()
        rows = [
            {
                **row,
                "sample_index": offset + row["sample_index"],
                "generator": spec.name,
                "round": r,
                "generated_at": now,
            }
            for row in rows
        ]
        append_jsonl(shard_file, rows)

    def sampling_params(self, spec, r: int, temperature: float | None = None) -> SamplingParams:
        """The round's sampling values, with the generator's own where it sets them; the round's temperature is
        the recipe's or, with `auto`, the one its probe chose (`temperature` overrides both, for the probe)."""
        if temperature is None and spec.temperature is None:
            temperature = self.round_temperature(r)
        return SamplingParams.for_round(self.args, r, spec, temperature)

    @contextlib.contextmanager
    def open_generator(self, spec, r: int):
        """The generator `spec` for round `r`, ready to sample on every rank, and released afterwards: a frozen
        model loaded and freed, or a managed server started (by the main process) and stopped."""
        from rs_trainer.phases.generators.local import LocalGenerator, load_frozen, release

        args, acc = self.args, self.accelerator
        if spec.engine == "local" and spec.is_policy:
            with full_weights(acc.unwrap_model(self.model)) as model:
                yield LocalGenerator(
                    model,
                    self.tokenizer,
                    args.generation_batch_size,
                    args.generation_engine,
                    token_budget=args.generation_token_budget,
                )
        elif spec.engine == "local":
            with outside_zero3_init():
                frozen = load_frozen(spec.model, self.model_args, acc.device)
            generator = LocalGenerator(
                *frozen,
                args.generation_batch_size,
                args.generation_engine,
                own_tokenizer=True,
                token_budget=args.generation_token_budget,
            )
            try:
                yield generator
            finally:
                generator.model = None  # the only reference: the teacher's memory is free before the next generator
                release()
        elif spec.engine == "openai" and spec.is_policy:
            with self.hot_loaded_adapter(spec, r) as generator:
                yield generator
        elif spec.engine == "openai":
            yield self.endpoints[spec.name]
        else:
            with self.managed_server(spec, r) as generator:
                yield generator

    @contextlib.contextmanager
    def hot_loaded_adapter(self, spec, r: int):
        """A server that stays up serves the policy: round 0 samples the base model (`spec.model`); a later round
        loads the previous round's adapter under a new name (`<generator>-round<r-1>`), samples from it, and
        unloads it right after, so adapters never pile up in the server's memory."""
        from rs_trainer.phases.generators.openai_client import OpenAIGenerator, post_adapter

        acc = self.accelerator
        checkpoint = self.files.checkpoint(r - 1) if r > 0 else None
        name = f"{spec.name}-round{r - 1}" if checkpoint else spec.model
        error = None
        if checkpoint and acc.is_main_process:
            try:
                with contextlib.suppress(GeneratorError):  # left loaded by a run that was killed
                    post_adapter(spec, "unload", name)
                post_adapter(spec, "load", name, str(checkpoint.resolve()))
            except GeneratorError as err:
                error = str(err)
        error = broadcast_object_list([error])[0]
        if error:
            raise GeneratorError(error)
        try:
            yield OpenAIGenerator(spec, spec.base_url, name, self.tokenizer)
        finally:
            if checkpoint and acc.is_main_process:
                with contextlib.suppress(GeneratorError):
                    post_adapter(spec, "unload", name)

    @contextlib.contextmanager
    def managed_server(self, spec, r: int):
        """Start `spec.command` on the main process (serving the policy's latest weights, written for the round, or
        `spec.model`), share its address with every rank, and stop it, whatever happens, before SFT."""
        from rs_trainer.phases.generators.openai_client import OpenAIGenerator, check_endpoint
        from rs_trainer.phases.generators.server import ManagedServer

        acc = self.accelerator
        server, error, address = None, None, None
        if acc.is_main_process:
            try:
                with outside_zero3_init():  # rank 0 alone loads it: no collective partitioning
                    top_k = self.sampling_params(spec, r).top_k
                    folder = self.write_served_model(r, top_k) if spec.is_policy else spec.model
                server = ManagedServer(spec.command, folder, self.files.server_log(r, spec.name), spec.startup_timeout)
                server.name = spec.name
                server.start()
                address = (server.base_url, spec.served_model or folder)
                check_endpoint(spec, *address, log_tail=server.log_tail, params=self.sampling_params(spec, r))
            except GeneratorError as err:
                error = str(err)
        error, address = broadcast_object_list([error, address])
        try:
            if error:
                raise GeneratorError(error)
            log_tail = server.log_tail if server else None
            yield OpenAIGenerator(spec, address[0], address[1], self.tokenizer, log_tail=log_tail)
        finally:
            if server is not None:
                server.stop()
            if acc.is_main_process and spec.is_policy:
                shutil.rmtree(self.files.served_model(r), ignore_errors=True)

    def write_served_model(self, r: int, top_k: int) -> str:
        """The policy's current weights for round `r` as a plain model folder a server can load."""
        from rs_trainer.phases.generators.setup import write_served_model
        from rs_trainer.run.models import torch_dtype

        last = self.files.checkpoint(r - 1) if r > 0 else None
        path = self.files.served_model(r)
        return write_served_model(
            path, self.model_path, last, torch_dtype(self.model_args.dtype), self.tokenizer, top_k
        )

    def select_samples(self, local: list[dict], r: int) -> None:
        """Mark this rank's rows `filtered_out` (taken out by the recipe's filters) and `selected`.

        The filters work within a prompt, and all N samples of a prompt are on the rank that generated them, so
        they run locally. The strategy then sees only the (prompt_id, sample_index, reward, completion_tokens) of
        every rank's candidates, gathered, never their text, and every rank reaches the same decision."""
        args = self.args
        candidates = filters.apply_recipe_filters(local, args)
        kept = {(s["prompt_id"], s["sample_index"]) for s in candidates}
        view = by_key(gather_object([{k: s[k] for k in selection.FIELDS} for s in candidates]))
        keys = set(selection.select(view, args, seed=seeds.round_seed(args.seed, r), round_index=r))
        for s in local:
            key = (s["prompt_id"], s["sample_index"])
            s["filtered_out"] = key not in kept
            s["selected"] = key in keys

    def rationalize(self, local: list[dict], r: int) -> list[dict]:
        """STaR's rationalization for this rank's prompts that no sample solved: the policy samples again with the
        ground truth as a hint, and the best completion that passes is selected, to be trained on without the
        hint (SFT renders each row's prompt from its `prompt_id`, never from the hinted text). Returns the new rows,
        `rationalized: true`, with sample indices after every generator's."""
        from rs_trainer.phases.generators.local import LocalGenerator

        args, acc = self.args, self.accelerator
        by_prompt = selection.group_by_prompt(local)

        def passes(s):
            verdict = s.get("verified_reward", s["reward"])
            return verdict is not None and verdict >= args.pass_threshold

        failed = [self.prompt_by_id[pid] for pid, rows in by_prompt.items() if not any(passes(s) for s in rows)]
        hinted = []
        for prompt in failed:
            messages = [dict(m) for m in prompt["prompt"]]
            last = max(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[last]["content"] += args.rationalization_hint.format(**prompt)
            hinted.append({**prompt, "prompt": messages})
        offset = sum(len(span) for span in self.sample_ranges.values())
        params = self.sampling_params(self.generator_specs[0], r)
        ids = encode_prompts(self.tokenizer, hinted)
        fits = [i for i, seq in enumerate(ids) if len(seq) + params.max_new_tokens <= self.context]
        hinted, ids = [hinted[i] for i in fits], [ids[i] for i in fits]  # a hint that overflows the context: skipped
        seed = seeds.sampling_seed(args.seed, r, seeds.RATIONALIZATION_STREAM, acc.process_index)
        with full_weights(acc.unwrap_model(self.model)) as model:  # ranks have different numbers of failed prompts
            policy = LocalGenerator(
                model,
                self.tokenizer,
                args.generation_batch_size,
                args.generation_engine,
                token_budget=args.generation_token_budget,
            )
            out = policy.generate(hinted, ids, args.rationalization_samples, params, seed=seed)
        # Each row carries the original prompt, without the hint: that is what it is scored and trained with.
        rows = [
            {**self.prompt_by_id[o["prompt_id"]], **o, "sample_index": offset + o["sample_index"], "round": r}
            for o in out
        ]
        rows = self.score_samples(rows)
        keep = set(selection.best_of_n([s for s in rows if passes(s)], seed=seeds.round_seed(args.seed, r)))
        for s in rows:
            key = (s["prompt_id"], s["sample_index"])
            s.update(generator="rationalization", rationalized=True, filtered_out=False, selected=key in keep)
        counts = gather_object([(len(keep), len(failed))])
        self.log(
            f"round {r}: rationalization rescued {sum(c[0] for c in counts)} of {sum(c[1] for c in counts)} "
            "prompts that no sample solved"
        )
        return rows

    def score_samples(self, samples: list[dict]) -> list[dict]:
        """Rewards from `reward_funcs`; with `eval_reward_funcs` also `verified_reward`, which pass@k counts."""
        scored = [{**s, **sc} for s, sc in zip(samples, score(samples, self.scorers, self.weights), strict=True)]
        if self.eval_scorers is not self.scorers:
            verified = score(samples, self.eval_scorers, self.eval_weights)
            scored = [{**s, "verified_reward": v["reward"]} for s, v in zip(scored, verified, strict=True)]
        return scored

    def sft(self, train_set: list[dict], r: int) -> dict:
        """`num_train_epochs` over `train_set`; returns loss and step statistics. A round with nothing selected
        skips."""
        args, acc = self.args, self.accelerator
        if args.sft_from == "base" and is_zero3(self.model):
            restore_trainable_gathered(self.model, self.base_state)
        elif args.sft_from == "base":
            restore_trainable(self.model, self.base_state)
        if not train_set:
            self.log(f"round {r}: nothing selected; SFT skipped")
            return {"train/loss": None, "train/steps": 0, "train/tokens": 0}
        examples = self.training_examples(train_set)
        if not examples:  # setup refuses a `max_length` that leaves no room; this guards the arithmetic
            self.log(f"round {r}: no example fits `max_length`; SFT skipped")
            return {"train/loss": None, "train/steps": 0, "train/tokens": 0}
        steps = plan_steps(
            examples,
            args.num_train_epochs,
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
            acc.process_index,
            acc.num_processes,
            seed=seeds.round_seed(args.seed, r),
        )
        reset_optimizer(self.optimizer)  # each round is a fresh fine-tuning run: new AdamW moments, new schedule
        from transformers import get_scheduler

        scheduler = get_scheduler(
            args.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=int(args.warmup_ratio * len(steps)),
            num_training_steps=len(steps),
        )
        with self.progress(len(steps), f"round {r} sft", "steps") as bar:

            def on_step(loss: float) -> None:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # drawn by the update, not on a line of its own
                bar.update(1)

            losses, tokens = train_steps(
                acc,
                self.model,
                self.optimizer,
                scheduler,
                steps,
                self.tokenizer.pad_token_id,
                args.max_grad_norm,
                on_step,
            )
        # The moments are not needed until the next round's SFT, which starts them afresh: free them now, so that
        # generation and evaluation have that memory (2 x the trainable parameters in fp32).
        reset_optimizer(self.optimizer)
        release_memory()
        return {
            "train/steps_per_rank": gather_object([len(steps)]),
            "train/loss": sum(losses) / len(losses),
            "train/loss_first": losses[0],
            "train/loss_last": losses[-1],
            "train/steps": len(steps),
            "train/examples": len(examples),
            "train/tokens": sum(gather_object([tokens])),
            "train/lr": scheduler.get_last_lr()[0],
        }

    def training_examples(self, rows: list[dict]) -> list[dict]:
        """Each row as the token sequence it was sampled as: its prompt's ids (never a hinted or re-rendered text),
        its completion and the end token when it finished; rows whose prompt fills `max_len` are left out."""
        eos = self.tokenizer.eos_token_id
        examples = []
        for s in rows:
            completion = tokenize_completion(self.tokenizer, s["completion"], s["finished"], eos)
            ex = build_example(self.prompt_ids[s["prompt_id"]], completion, self.max_len)
            if ex is not None:
                examples.append(ex)
        return examples

    def evaluate(self) -> dict:
        """Held-out greedy decoding, judged by the eval scorers: `eval/accuracy`, the fraction of eval prompts whose
        completion reaches `pass_threshold`, and `eval/reward`, the mean reward of those that got one."""
        args, acc = self.args, self.accelerator
        local = data.shard(self.eval_prompts, acc.process_index, acc.num_processes)
        with full_weights(acc.unwrap_model(self.model)) as model:
            out = generate(
                model,
                self.tokenizer,
                local,
                1,
                SamplingParams(temperature=0.0, max_new_tokens=args.eval_max_new_tokens),
                batch_size=args.generation_batch_size,
                prompt_ids=[self.eval_prompt_ids[p["prompt_id"]] for p in local],
                engine=args.generation_engine,
                token_budget=args.generation_token_budget,
            )
        by_id = {p["prompt_id"]: p for p in local}
        scored = score([{**by_id[s["prompt_id"]], **s} for s in out], self.eval_scorers, self.eval_weights)
        rewards = gather_object([sc["reward"] for sc in scored])
        given = [x for x in rewards if x is not None]
        return {
            "eval/accuracy": sum(x is not None and x >= args.pass_threshold for x in rewards) / len(rewards),
            "eval/reward": sum(given) / len(given) if given else None,
        }

    # ------------------------------------------------------------------ report and save
    def report(self, r: int, samples: list[dict] | None, metrics: dict) -> None:
        """Trackers, the samples table, report.png, then metrics.json (last: it marks the round as finished)."""
        acc = self.accelerator
        acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "round"}, step=r + 1)
        if not acc.is_main_process:
            return

        table = sample_table(samples)
        write_atomic(self.files.samples_table(r), f"# Round {r}: best and worst samples\n\n" + markdown_table(table))
        for tracker in acc.trackers:
            if tracker.name == "wandb" and table:
                tracker.log_table("samples", columns=list(table[0]), data=[list(t.values()) for t in table], step=r)
        plot_report(self.history, samples, self.base_accuracy, self.files.report)
        write_json(self.files.metrics(r), metrics)

    def save_generations(self, r: int, rows: list[dict]) -> list[dict] | None:
        """Gather every rank's scored rows on the main process, which writes the round's rows and its selected SFT
        set, each atomically, then removes the shards. Returns every row there (in key order), None elsewhere."""
        acc = self.accelerator
        every_row = gather_to_main(rows, acc)
        if acc.is_main_process:
            every_row = by_key(every_row)
            # generations.jsonl last: it marks the phase as done, so a kill before it redoes scoring and selection.
            write_jsonl(self.files.sft_set(r), sft_rows(every_row))
            write_jsonl(self.files.generations(r), every_row)
            shutil.rmtree(self.files.shards(r), ignore_errors=True)
        acc.wait_for_everyone()
        return every_row

    def save_checkpoint(self, path: Path, sft_stats: dict) -> None:
        """Save the adapter (LoRA) or the full model with its tokenizer, loadable without this package, and the
        round's SFT statistics beside them (`TRAIN_METRICS`): a run killed later in the round resumes from
        here without training again. The folder is swapped in whole (`atomic_dir`)."""
        acc = self.accelerator
        if not self.args.save_checkpoints:
            return
        acc.wait_for_everyone()
        if is_zero3(self.model) and self.model_args.use_peft:
            state = trainable_state_gathered(self.model, keep=acc.is_main_process)  # the adapter only
        elif is_zero3(self.model):
            state = full_state_gathered(self.model, keep=acc.is_main_process)
        elif self.model_args.use_peft and fsdp_units(acc.unwrap_model(self.model)):
            state = trainable_full_state(acc.unwrap_model(self.model), keep=acc.is_main_process)  # the adapter only
        else:
            state = acc.get_state_dict(self.model)
        if acc.is_main_process:
            with atomic_dir(path) as tmp:
                acc.unwrap_model(self.model).save_pretrained(tmp, state_dict=state, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)
                write_json(tmp / TRAIN_METRICS, sft_stats)
        acc.wait_for_everyone()

    def cleanup(self) -> None:
        self.accelerator.end_training()  # closes the trackers

    # ------------------------------------------------------------------ helpers
    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message)

    def progress(self, total: int, desc: str, unit: str):
        return progress_bar(total, desc, unit, enabled=self.accelerator.is_main_process)
