"""What the policy learns and how it is measured: SFT on a round's selected rows, drift (KL to the base model and
entropy) on its own samples, greedy evaluation on the held-out and out-of-distribution sets, and its checkpoints."""

from __future__ import annotations

import contextlib
from pathlib import Path

from accelerate.utils import gather_object

from rs_trainer.phases.generation import SamplingParams
from rs_trainer.phases.sft import (
    IGNORE,
    build_example,
    plan_steps,
    reset_optimizer,
    tokenize_completion,
    train_steps,
)
from rs_trainer.run import data, resume, seeds
from rs_trainer.run.deepspeed import restore_trainable_gathered
from rs_trainer.run.io import atomic_dir, write_json, write_jsonl
from rs_trainer.run.layout import TRAIN_METRICS
from rs_trainer.run.metrics import eval_metrics
from rs_trainer.run.models import release
from rs_trainer.run.ranks import log, progress
from rs_trainer.samples import with_prompt


class Learner:
    """Trains and measures the policy for the trainer; reads `RunInputs`, holds nothing but the `Policy`."""

    def __init__(self, inputs, policy, serving):
        self.inputs, self.policy = inputs, policy
        self.serving = serving  # evaluation decodes through the policy's generator (`Serving.open_decoder`)
        # Optimizer steps over the whole run (on each rank alike): the trackers' step, which SFT's per-step loss and
        # learning rate and each round's metrics share, so that it only ever grows (wandb drops a step that goes
        # back). A resumed run starts it at its finished rounds' steps.
        self.global_step = 0

    def fit(self, train_set: list[dict], r: int) -> dict:
        """`num_train_epochs` over `train_set`; returns loss and step statistics. A round with nothing selected
        skips. With `sft_from: base` the trainable weights start from the base model's again."""
        inputs, policy = self.inputs, self.policy
        args, acc = inputs.args, inputs.accelerator
        if args.sft_from == "base":
            restore_trainable_gathered(policy.model, policy.base_state)
        examples = self.training_examples(train_set)
        if not examples:  # nothing selected, or (setup refuses this) no example fits `max_length`
            log(
                acc,
                f"round {r}: "
                + ("no example fits `max_length`" if train_set else "nothing selected")
                + "; SFT skipped",
            )
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
        losses, tokens, last_lr = self._train(steps, r)
        return {
            "train/steps_per_rank": gather_object([len(steps)]),
            "train/loss": sum(losses) / len(losses),
            "train/loss_first": losses[0],
            "train/loss_last": losses[-1],
            "train/steps": len(steps),
            "train/examples": len(examples),
            "train/tokens": sum(gather_object([tokens])),
            "train/lr": last_lr,
        }

    def _train(self, steps: list, r: int) -> tuple[list[float], int, float]:
        """A fresh fine-tuning run over `steps` (new AdamW moments, new schedule); the optimizer's state is freed
        after it, so that generation and evaluation have that memory (2 x the trainable parameters in fp32)."""
        from transformers import get_scheduler

        inputs, policy = self.inputs, self.policy
        args, acc = inputs.args, inputs.accelerator
        reset_optimizer(policy.optimizer)
        scheduler = get_scheduler(
            args.lr_scheduler_type,
            policy.optimizer,
            num_warmup_steps=int(args.warmup_ratio * len(steps)),
            num_training_steps=len(steps),
        )
        with progress(acc, len(steps), f"round {r} sft", "steps") as bar:

            def on_step(loss: float) -> None:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # drawn by the update, not on a line of its own
                bar.update(1)
                self.global_step += 1
                lr = scheduler.get_last_lr()[0]
                acc.log({"train/step_loss": loss, "train/step_lr": lr, "round": r}, step=self.global_step)

            pad = inputs.tokenizer.pad_token_id
            model, optimizer = policy.model, policy.optimizer
            losses, tokens = train_steps(acc, model, optimizer, scheduler, steps, pad, args.max_grad_norm, on_step)
        reset_optimizer(policy.optimizer)
        release()
        return losses, tokens, scheduler.get_last_lr()[0]

    def training_examples(self, rows: list[dict], keep_gaps: bool = False) -> list[dict]:
        """Each row as the token sequence it was sampled as: its prompt's ids (never a hinted or re-rendered text),
        its completion and the end token when it finished; rows whose prompt fills `max_len` are left out (with
        `keep_gaps`, left as None, so the list lines up with `rows`)."""
        inputs = self.inputs
        tokenizer = inputs.tokenizer
        examples = []
        for s in rows:
            completion = tokenize_completion(tokenizer, s["completion"], s["finished"], tokenizer.eos_token_id)
            ex = build_example(inputs.prompt_ids[s["prompt_id"]], completion, inputs.max_len)
            if ex is not None or keep_gaps:
                examples.append(ex)
        return examples

    def measure_drift(self, rows: list[dict], r: int) -> dict:
        """`rs/kl_ref` (nats per sample) and `rs/entropy` (nats per token) of the policy on its own samples of the
        round, before this round's SFT (the weights that sampled them); see `rs_trainer.phases.divergence`. `rows`
        are this rank's rows of the round, of which a seeded draw of `kl_samples` (split over the ranks) is used.
        Where the sampler recorded the policy's log-probabilities (the `rs` engine, vLLM) only the reference pass
        runs; `rs/entropy` is then None unless the engine gave entropies too (the `rs` engine does, vLLM does not),
        and `rs/kl_from_sampler` is 1."""
        from rs_trainer.phases.divergence import kl_and_entropy

        inputs, policy = self.inputs, self.policy
        args, acc = inputs.args, inputs.accelerator
        if policy.kl_reference is None:
            return {}
        own = {s.name for s in inputs.generator_specs if s.samples_training_weights}
        mine = [s for s in rows if s.get("generator", "policy") in own]
        share = -(-args.kl_samples // acc.num_processes)  # ceil
        if args.kl_samples and len(mine) > share:
            rng = seeds.kl_rows_rng(args.seed, r, acc.process_index)
            mine = [mine[i] for i in sorted(rng.sample(range(len(mine)), share))]
        sampled = bool(mine) and all(isinstance(s.get("logprob"), float) and s.get("completion_ids") for s in mine)
        if sampled:  # the very tokens the sampler's sums cover; a completion cut by `max_len` is not comparable
            built = [
                build_example(inputs.prompt_ids[s["prompt_id"]], s["completion_ids"], inputs.max_len) for s in mine
            ]
            pairs = [
                (s, ex)
                for s, ex in zip(mine, built, strict=True)
                if ex is not None and sum(label != IGNORE for label in ex["labels"]) == len(s["completion_ids"])
            ]
        else:
            lined_up = zip(mine, self.training_examples(mine, keep_gaps=True), strict=True)
            pairs = [(s, ex) for s, ex in lined_up if ex is not None]
        examples = [ex for _, ex in pairs]
        given = {}
        if sampled:
            given["policy_logprobs"] = [s["logprob"] for s, _ in pairs]
            if all(isinstance(s.get("entropy"), float) for s, _ in pairs):
                given["entropy_sums"] = [s["entropy"] for s, _ in pairs]
        ref = None if policy.kl_reference == "adapter" else policy.kl_reference
        pad = inputs.tokenizer.pad_token_id
        with policy.sharding.full_weights(acc.unwrap_model(policy.model)) as model:  # ranks: unequal batches
            sums = kl_and_entropy(model, examples, pad, ref_model=ref, **given) if examples else {}
        parts = gather_object([sums])
        total = {k: sum(part.get(k) or 0 for part in parts) for k in ("kl_sum", "entropy_sum", "tokens", "samples")}
        if not total["samples"]:
            return {}
        entropy_known = all(part.get("entropy_sum") is not None for part in parts if part)
        from_sampler = all(gather_object([sampled or not examples]))
        return {
            "rs/kl_ref": total["kl_sum"] / total["samples"],
            "rs/entropy": total["entropy_sum"] / max(total["tokens"], 1) if entropy_known else None,
            "rs/kl_samples": total["samples"],
            "rs/kl_from_sampler": float(from_sampler),
        }

    def evaluate(
        self, policy_round: int, splits: list[str] | None = None, clock=None, rows_to: Path | None = None
    ) -> dict:
        """Greedy decoding of each evaluation set of `splits` (default: all of `eval_splits`) by the policy that
        samples round `policy_round` (0: the base model; r + 1: round r's, trained), judged by the eval scorers:
        its accuracy, the fraction of its prompts whose completion reaches `pass_threshold`, and its reward,
        the mean reward of those that got one (`eval/accuracy` and `eval/reward` for the held-out set,
        `eval/<split>/...` for the others: `run.metrics.eval_key`). The policy's own generator decodes where it runs
        in this process (a colocated vLLM evaluates in vLLM), else the in-process sampler (`Serving.open_decoder`).
        Each set is spread over the ranks and decoded on its own, so the held-out numbers are those a run without
        the other sets gets; `clock` times each (`timing/eval/<split>`). With `rows_to`, every set's completions go
        there too, one row per prompt with its set (`split`), prompt, answer, completion and reward, in the sets'
        prompt order (`eval_rows`)."""
        inputs = self.inputs
        args, acc = inputs.args, inputs.accelerator
        splits = list(inputs.eval_sets) if splits is None else splits
        if not splits:
            return {}
        local = {s: data.shard(inputs.eval_sets[s], acc.process_index, acc.num_processes) for s in splits}
        completions = {}
        greedy = SamplingParams(temperature=0.0, max_new_tokens=args.eval_max_new_tokens)
        with self.serving.open_decoder(policy_round, greedy) as decoder:
            counted = getattr(decoder, "engine_requests", None)  # an engine that counts its requests (vLLM)
            for split, prompts in local.items():
                with clock.phase(f"eval/{split}") if clock else contextlib.nullcontext():
                    ids = [inputs.eval_prompt_ids[p["prompt_id"]] for p in prompts]
                    completions[split] = decoder.generate(prompts, ids, 1, greedy)
            if counted is not None:  # every rank alike: the decoder is the same kind on each
                requests = sum(gather_object([decoder.engine_requests - counted]))
        out, rows = ({"eval/engine_requests": requests} if counted is not None else {}), []
        for split, prompts in local.items():
            by_id = {p["prompt_id"]: p for p in prompts}
            judged = with_prompt(completions[split], by_id)
            local_rewards = inputs.scoring.judge(judged)
            rewards = gather_object(local_rewards)
            out.update(eval_metrics(split, rewards, args.pass_threshold))
            if rows_to is not None:
                rows += gather_object(eval_rows(split, judged, local_rewards, args.pass_threshold))
        if rows_to is not None and acc.is_main_process:
            order = {p["prompt_id"]: i for prompts in inputs.eval_sets.values() for i, p in enumerate(prompts)}
            write_jsonl(rows_to, sorted(rows, key=lambda row: (splits.index(row["split"]), order[row["prompt_id"]])))
        return out

    def save_checkpoint(self, path: Path, sft_stats: dict) -> None:
        """Save the adapter (LoRA) or the full model with its tokenizer, loadable without this package, and the
        round's SFT statistics beside them (`TRAIN_METRICS`): a run killed later in the round resumes from
        here without training again. The folder is swapped in whole (`atomic_dir`)."""
        inputs, model = self.inputs, self.policy.model
        acc = inputs.accelerator
        if not inputs.args.save_checkpoints:
            return
        acc.wait_for_everyone()
        main, lora = acc.is_main_process, inputs.model_args.use_peft
        state = self.policy.sharding.state_to_save(acc, model, lora, keep=main)
        if main:
            with atomic_dir(path) as tmp:
                acc.unwrap_model(model).save_pretrained(tmp, state_dict=state, safe_serialization=True)
                inputs.tokenizer.save_pretrained(tmp)
                write_json(tmp / TRAIN_METRICS, sft_stats)
        acc.wait_for_everyone()

    def load_checkpoint(self, path: Path) -> None:
        """A saved round's adapter or full weights, back into the (possibly sharded) policy, on every rank."""
        resume.load_weights(self.inputs.accelerator.unwrap_model(self.policy.model), path, self.policy.sharding)


EVAL_ROW_KEYS = ("prompt_id", "prompt", "answer", "completion", "completion_tokens", "finished")


def eval_rows(split: str, judged: list[dict], rewards: list[float | None], pass_threshold: float) -> list[dict]:
    """One evaluation set's rows as `eval.jsonl` keeps them: the set, the prompt, its answer (when the dataset has
    one), the greedy completion, its reward and whether it passed (`pass_threshold`).

    >>> row = {"prompt_id": "q1", "prompt": [], "answer": "7", "completion": "7", "finished": True, "x": 1}
    >>> eval_rows("heldout", [row], [1.0], 1.0)
    [{'split': 'heldout', 'prompt_id': 'q1', 'prompt': [], 'answer': '7', 'completion': '7', 'finished': True, \
'reward': 1.0, 'passed': True}]
    """
    return [
        {"split": split, **{k: row[k] for k in EVAL_ROW_KEYS if k in row}, "reward": reward}
        | {"passed": reward is not None and reward >= pass_threshold}
        for row, reward in zip(judged, rewards, strict=True)
    ]
