"""What a round leaves on disk and in the trackers: its scored rows and SFT set (the mark that sampling, scoring
and selection are done), its metrics, and the report whose last file, `metrics.json`, marks the round finished."""

from __future__ import annotations

import shutil

from accelerate.utils import broadcast_object_list

from rs_trainer.phases.temperature import AUTO, probe_metrics
from rs_trainer.rewards import REWARD_MODEL_PREFIX
from rs_trainer.rewards.reward_model import training_metrics
from rs_trainer.run.browser import write_run_page
from rs_trainer.run.formats import sft_rows
from rs_trainer.run.io import write_atomic, write_json, write_jsonl
from rs_trainer.run.metrics import round_metrics
from rs_trainer.run.ranks import gather_to_main
from rs_trainer.run.report import plot_report, sample_table, samples_markdown
from rs_trainer.samples import in_key_order, key
from rs_trainer.trainer.serving import read_probe, round_temperature


def commit_scored_rows(inputs, r: int, rows: list[dict]) -> list[dict] | None:
    """Gather every rank's scored rows on the main process, which writes the round's selected SFT set and then its
    rows, each atomically, and removes the shards. Returns every row there (in key order), None elsewhere."""
    acc, files = inputs.accelerator, inputs.files
    every_row = gather_to_main(rows, acc)
    if acc.is_main_process:
        every_row = in_key_order(every_row)
        # generations.jsonl last: it marks the phase as done, so a kill before it redoes scoring and selection.
        write_jsonl(files.sft_set(r), sft_rows(every_row))
        write_jsonl(files.generations(r), every_row)
        shutil.rmtree(files.shards(r), ignore_errors=True)
    acc.wait_for_everyone()
    return every_row


def collect_metrics(inputs, r: int, rows: list[dict] | None, selected: list[dict], measured: dict, clock, before):
    """The round's metrics, computed on the main process from every row of the round (`rows`, None on the other
    ranks) and shared with every rank: sample and selection statistics, per generator too, the temperature and its
    probe, `measured` (SFT, drift and evaluation), the accuracy `before` the round, and the timings."""
    metrics = None
    if inputs.accelerator.is_main_process:
        metrics = round_record(inputs, r, rows, {key(s) for s in selected})
        metrics.update({**measured, "eval/accuracy_before": before})
        metrics.update({f"timing/{k}": v for k, v in clock.timings.items()})
        metrics.update(generator_speeds(inputs.generator_specs, rows, clock))
        metrics["timing/round"] = clock.elapsed()
    return broadcast_object_list([metrics])[0]  # every rank keeps the main process's history


def round_record(inputs, r: int, rows: list[dict], keys: set) -> dict:
    """Sample and selection statistics, rationalization counts, the round's temperature and its probe's table."""
    args, files = inputs.args, inputs.files
    sampled = [s for s in rows if not s.get("rationalized")]  # hinted samples distort pass@k
    metrics = {"round": r, **round_metrics(sampled, keys, args.pass_threshold)}
    if args.rationalize:
        metrics["rs/rationalized"] = sum(bool(s.get("rationalized") and s["selected"]) for s in rows)
        metrics["rs/rationalization_prompts"] = len({s["prompt_id"] for s in rows if s.get("rationalized")})
    metrics["rs/filtered_out"] = sum(s.get("filtered_out", False) for s in rows)
    metrics.update(reward_model_watch([getattr(fn, "__name__", "") for fn in inputs.scoring.scorers.values()]))
    probe = read_probe(files, r)
    auto = args.for_round("temperature", r) == AUTO
    metrics["rs/temperature"] = round_temperature(args, files, r) if probe or not auto else None
    if probe:
        metrics.update(probe_metrics(probe["table"], probe["temperature"], probe["extra_tokens"]))
    return metrics


def reward_model_watch(scorer_names: list[str]) -> dict:
    """Beside the proxy-versus-gold metrics, what `rs-trainer reward-model` measured of each reward model that
    scores this round (named `reward_model:<folder>`, a refreshed one too): `watch/reward_model_heldout_accuracy`
    (pairwise, on its held-out pairs) and the same-form accuracies (`watch/reward_model_same_form/<split>`),
    suffixed `/<i>` from the second reward model on."""
    out = {}
    models = [name[len(REWARD_MODEL_PREFIX) :] for name in scorer_names if name.startswith(REWARD_MODEL_PREFIX)]
    for i, path in enumerate(models):
        found = training_metrics(path) or {}
        suffix = f"/{i}" if i else ""
        if found.get("eval/pairwise_accuracy") is not None:
            out[f"watch/reward_model_heldout_accuracy{suffix}"] = found["eval/pairwise_accuracy"]
        for k, v in found.items():
            if k.startswith("eval/same_form/") and not k.endswith("_before"):
                out[f"watch/reward_model_same_form/{k.removeprefix('eval/same_form/')}{suffix}"] = v
    return out


def generator_speeds(specs, rows: list[dict], clock) -> dict:
    """`gen/<generator>/tokens_per_s` over the rows sampled in this round's generation phase: none reused from
    disk, none from a probe."""
    speeds = {}
    for spec in specs:
        seconds = clock.timings.get(f"generate/{spec.name}")
        since = clock.started.get(f"generate/{spec.name}", float("inf"))
        new_tokens = sum(
            s["completion_tokens"]
            for s in rows
            if s.get("generator", "policy") == spec.name and s.get("generated_at", 0) >= since
        )
        if seconds and new_tokens:
            speeds[f"gen/{spec.name}/tokens_per_s"] = new_tokens / seconds
    return speeds


def finish_round(
    inputs, r: int, samples: list[dict] | None, metrics: dict, history: list[dict], base_eval, step: int
) -> None:
    """Trackers (at `step`, the run's optimizer steps so far, with `round` among the values), the samples table,
    report.png (with `base_eval`, the base model's evaluation), metrics.json (it marks the round as finished), then
    the run browser, index.html, which reads the finished rounds from disk."""
    acc, files = inputs.accelerator, inputs.files
    acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
    if not acc.is_main_process:
        return
    table = sample_table(samples)
    write_atomic(files.samples_table(r), samples_markdown(table, f"Round {r}"))
    for tracker in acc.trackers:
        if tracker.name == "wandb" and table:
            tracker.log_table("samples", columns=list(table[0]), data=[list(t.values()) for t in table], step=step)
    plot_report(history, samples, base_eval, files.report)
    write_json(files.metrics(r), metrics)
    write_run_page(files.root)
