"""`RejectionSamplingTrainer`: setup, the round loop, resume, cleanup. Read `run_round` top to bottom for the
algorithm:
  prompts -> generate N each -> score -> select -> SFT on the selected set -> evaluate -> save
and the next round samples from the model this round trained. The work is done by collaborators that never call
back: `RoundSampler` (generate, probe, select, rationalize), `Serving` (the generators), `Learner` (SFT, drift,
evaluation, checkpoints) and the functions of `records` (what a round writes)."""

from __future__ import annotations

import json
from typing import NamedTuple

from accelerate.utils import set_seed

from rs_trainer.errors import ConfigError, UploadError, first_line
from rs_trainer.phases.temperature import AUTO
from rs_trainer.rewards import REWARD_MODEL_PREFIX
from rs_trainer.run import data, resume, seeds
from rs_trainer.run.browser import write_run_page
from rs_trainer.run.io import recover_dir, write_json
from rs_trainer.run.metrics import eval_key, proxy_gold_turn, summary_table
from rs_trainer.run.models import release
from rs_trainer.run.progress import RoundClock
from rs_trainer.run.ranks import log, make_accelerator
from rs_trainer.trainer.learner import Learner
from rs_trainer.trainer.records import collect_metrics, commit_scored_rows, finish_round
from rs_trainer.trainer.refresh import recipe_reward_model, refreshed_reward_model, use_reward_model
from rs_trainer.trainer.sampler import RoundSampler
from rs_trainer.trainer.serving import Serving
from rs_trainer.trainer.setup import build_policy, prepare_run, run_banner, write_run_config


class RoundRows(NamedTuple):
    rows: list[dict]  # this rank's rows of the round, scored and marked `selected`
    selected: list[dict]  # the selected rows of every rank, on every rank
    every_row: list[dict] | None  # every row of the round, on the main process (None on the others)


class RejectionSamplingTrainer:
    """Rejection-sampling rounds from an `RSConfig` and TRL's `ModelConfig`: `setup()`, `train()`, `cleanup()`."""

    def __init__(self, args, model_args, accelerator=None):
        self.args = args
        self.model_args = model_args
        self.accelerator = accelerator or make_accelerator(args)
        self.inputs = None  # RunInputs, from `setup`
        self.policy = None  # Policy: the prepared model and optimizer
        self.sampler: RoundSampler | None = None
        self.learner: Learner | None = None
        self.history: list[dict] = []
        self.pool: list[dict] = []  # selected samples of earlier rounds, for `pool_previous_rounds`
        self.base_eval: dict = {}  # the base model's evaluation (`base_eval.json`)

    # The policy's parts, for callers that inspect the trained model.
    model = property(lambda self: self.policy.model)
    optimizer = property(lambda self: self.policy.optimizer)
    base_state = property(lambda self: self.policy.base_state)

    def setup(self) -> None:
        """Validate everything that can be validated, then load. Nothing is written before all checks pass."""
        set_seed(self.args.seed)
        log(self.accelerator, run_banner(self.args, self.model_args, self.accelerator.num_processes))
        self.inputs = prepare_run(self.args, self.model_args, self.accelerator)
        self.policy = build_policy(self.inputs)
        serving = Serving(self.inputs, self.policy)
        self.sampler = RoundSampler(self.inputs, self.policy, serving)
        self.learner = Learner(self.inputs, self.policy, serving)
        write_run_config(self.inputs)

    def train(self) -> list[dict]:
        """Every round not yet finished in `output_dir`; returns the rounds' metrics."""
        self.base_eval = self.evaluate_base()
        for r in range(self.resume(), self.args.num_rounds):
            if not self.run_round(r):
                break
        log(self.accelerator, "\n" + summary_table(self.history))
        if self.accelerator.is_main_process:
            write_json(self.inputs.files.summary, self.history)
            page = write_run_page(self.inputs.files.root)  # again: a kill between a round's end and its page
            log(self.accelerator, f"browse the run: {page.resolve().as_uri()}")
        # Every rank leaves together: a rank that runs ahead into interpreter shutdown while gloo's worker thread
        # still releases the last broadcast's tensors can abort natively ("terminate called without an active
        # exception", pytorch/pytorch#190489 and #179291; the likely cause of docs/LOG.md's ZeRO-3 abort), and
        # the launcher then kills the main process before its last writes.
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub and self.accelerator.is_main_process:
            self.push_final_model()
        return self.history

    def push_final_model(self) -> None:
        """`push_to_hub`: the last round's policy, merged, with its model card, to `output_dir/merged`, then
        uploaded to `hub_model_id` (`rs_trainer.tools.model_export`)."""
        from rs_trainer.tools.model_export import export_model, push_to_hub

        folder = export_model(self.inputs.files.root, self.inputs.files.merged)
        log(self.accelerator, f"the last round's policy, merged: {folder}")
        try:
            url = push_to_hub(folder, self.args.hub_model_id, private=self.args.hub_private_repo)
        except Exception as err:  # offline, no token, no right to the repository: the run itself is done
            raise UploadError(
                f"`push_to_hub`: uploading {folder} to {self.args.hub_model_id} failed ({first_line(err)[:200]}); "
                f"the run is finished and the folder whole: upload it with `hf upload "
                f"{self.args.hub_model_id} {folder}` once the Hub is reachable and you are logged in."
            ) from None
        log(self.accelerator, f"pushed to {url}")

    def run_round(self, r: int) -> bool:
        """One round: sample, score and select (or read them back), train, evaluate, report. Returns False when
        the run stops here (`max_kl_action: stop`)."""
        args = self.args
        clock = RoundClock()
        set_seed(seeds.global_seed(args.seed, r))  # dropout and any other global draw: the same path when resumed
        rows, selected, every_row = self.sample_score_select(r, clock)
        with clock.phase("kl"):
            drift = self.learner.measure_drift(rows, r)
        if self.drifted_too_far(r, drift):
            return False
        self.pool.extend(selected)
        train_set = self.pool if args.pool_previous_rounds else selected
        sft_stats = self.sft_round(r, train_set, clock)
        with clock.phase("eval"):
            scores = self.learner.evaluate(r + 1, clock=clock, rows_to=self.inputs.files.eval_rows(r))
            evaluation = {"eval/accuracy": None, "eval/reward": None, **scores}
        before = self.history[-1]["eval/accuracy"] if self.history else self.base_eval.get("eval/accuracy")
        measured = {**sft_stats, **drift, **evaluation}
        metrics = collect_metrics(self.inputs, r, every_row, selected, measured, clock, before)
        if "watch/gold_selected_mean" in metrics:  # a proxy selects and a verifier judges: watch for hacking
            turn = proxy_gold_turn(self.history[-1] if self.history else None, metrics)
            metrics["watch/proxy_up_gold_down"] = turn is not None
            if turn:
                log(self.accelerator, turn)
        self.history.append(metrics)
        finish_round(self.inputs, r, every_row, metrics, self.history, self.base_eval, self.learner.global_step)
        log(self.accelerator, summary_table(self.history[-1:]))
        return True

    def sample_score_select(self, r: int, clock: RoundClock) -> RoundRows:
        """The round's rows, scored and marked. A round that got as far as its `generations.jsonl` before a kill is
        read back, not sampled again."""
        acc, args, sampler = self.accelerator, self.args, self.sampler
        with clock.phase("reward_model"):  # `reward_model_refresh`: a reward model trained on rounds 0..r-1
            refreshed = refreshed_reward_model(self.inputs, r)  # read back when a killed run trained it already
        if refreshed is not None:
            use_reward_model(self.inputs.scoring, REWARD_MODEL_PREFIX + recipe_reward_model(args), refreshed)
        saved = resume.scored_rows(self.inputs.files, r)
        if saved is not None:
            mine = data.shard(saved, acc.process_index, acc.num_processes)
            return RoundRows(mine, [s for s in saved if s["selected"]], saved if acc.is_main_process else None)
        prompts = data.draw_round_prompts(self.inputs.train_prompts, args.prompts_per_round, args.seed, r)
        if args.for_round("temperature", r) == AUTO:
            with clock.phase("temperature_probe"):
                sampler.probe_temperature(prompts, r)
        with clock.phase("generate"):
            rows = sampler.generate(prompts, r, clock)
        release()  # the KV caches, before the reward model scores
        with clock.phase("score"):
            rows = self.inputs.scoring.score(rows)
        overran = [f"{s['prompt_id']}#{s['sample_index']}" for s in rows if s.get("timed_out")]
        if overran:  # this rank's; `rs/scorer_timeouts` counts them all
            log(
                self.accelerator,
                f"round {r}: {len(overran)} sample(s) overran `verifier_timeout` ({args.verifier_timeout:g} s) and "
                f"score None: {', '.join(overran[:10])}{' ...' if len(overran) > 10 else ''}",
            )
        with clock.phase("select"):
            sampler.select(rows, r)
        if args.rationalize:
            with clock.phase("rationalize"):
                rows += sampler.rationalize(rows, r)
        every_row = commit_scored_rows(self.inputs, r, rows)
        return RoundRows(rows, sampler.gather_selected(rows), every_row)

    def drifted_too_far(self, r: int, drift: dict) -> bool:
        """`max_kl`: warn, or (`max_kl_action: stop`) end the run before this round's SFT."""
        kl, limit = drift.get("rs/kl_ref"), self.args.max_kl
        if kl is None or limit is None or kl <= limit:
            return False
        message = f"round {r}: KL to the base model {kl:.3f} passed `max_kl` {limit}"
        stop = self.args.max_kl_action == "stop"
        log(
            self.accelerator,
            message + ("; stopping before this round's SFT (`max_kl_action: stop`)." if stop else "."),
        )
        return stop

    def sft_round(self, r: int, train_set: list[dict], clock: RoundClock) -> dict:
        """SFT on `train_set` and the checkpoint; a round killed after its save loads that checkpoint instead."""
        files = self.inputs.files
        sft_stats = resume.trained_round(files, r)
        if sft_stats is not None:
            self.learner.load_checkpoint(files.checkpoint(r))
            return sft_stats
        set_seed(
            seeds.global_seed(self.args.seed, r)
        )  # the same draws (dropout) whether the round's samples were made or read
        with clock.phase("sft"):
            sft_stats = self.learner.fit(train_set, r)
        with clock.phase("save"):
            self.learner.save_checkpoint(files.checkpoint(r), sft_stats)
        return sft_stats

    def resume(self) -> int:
        """Pick up the finished rounds of an earlier run in `output_dir`; return the first round still to run."""
        acc, files = self.accelerator, self.inputs.files
        if acc.is_main_process:  # a checkpoint swap cut short by a kill is finished or undone before anyone reads
            for r in files.rounds():
                recover_dir(files.checkpoint(r))
        acc.wait_for_everyone()
        self.history = resume.finished_rounds(files)[: self.args.num_rounds]
        if not self.history:
            return 0
        last = len(self.history) - 1
        checkpoint = files.checkpoint(last)
        if not checkpoint.exists():
            raise ConfigError(f"Cannot resume from round {last}: {checkpoint} is missing (`save_checkpoints` false?).")
        # The next round samples from the model the last round trained (with `sft_from: base` too).
        self.learner.load_checkpoint(checkpoint)
        for r in range(len(self.history)):
            self.pool.extend(s for s in resume.scored_rows(files, r) if s["selected"])
        self.learner.global_step = sum(h.get("train/steps") or 0 for h in self.history)
        log(acc, f"resuming {files.root}: rounds 0..{last} are finished")
        return len(self.history)

    def evaluate_base(self) -> dict:
        """The base model's evaluation on every set of `eval_splits`, computed once per run and kept in
        `base_eval.json`; a set the file lacks (a run begun before the set was evaluated) is evaluated and added.
        It runs before `resume` loads a checkpoint, so the policy is still the base model."""
        path = self.inputs.files.base_eval
        saved = json.loads(path.read_text()) if path.exists() else {}
        missing = [s for s in self.inputs.eval_sets if eval_key(s, "accuracy") not in saved]
        if not missing:
            return saved
        rows_to = None if saved else self.inputs.files.base_eval_rows  # a set added later: its numbers only
        evaluation = self.learner.evaluate(0, missing, rows_to=rows_to)
        accuracies = ", ".join(f"{s} {evaluation[eval_key(s, 'accuracy')]:.3f}" for s in missing)
        log(self.accelerator, f"base model: greedy accuracy {accuracies}")
        self.accelerator.log({k: v for k, v in evaluation.items() if v is not None}, step=0)
        if self.accelerator.is_main_process:
            write_json(path, {**saved, **evaluation})
        return {**saved, **evaluation}

    def cleanup(self) -> None:
        self.close()
        self.accelerator.end_training()  # closes the trackers

    def close(self) -> None:
        """Stop the servers the run started for its judges (`kind: judge` with `command`); idempotent, and safe on a
        run whose setup failed."""
        if self.inputs is not None:
            self.inputs.scoring.stop_judges()
