"""Best-of-N inference: sample N completions per prompt, score them, keep the best, and measure what N buys.

    rs-trainer best-of-n --config recipes/<model>/<recipe>.yaml [--key value ...]

The same recipe keys as training (prompts, sampling of round 0, scorers, `prefer_shorter`, `seed`). Writes to
`output_dir`:
- `best_of_n.jsonl`: per prompt, the best completion and every candidate with its reward and the `model` that
  wrote it;
- `best_of_n_metrics.json`: the expected best-of-n reward for n = 1..N (`phases.estimators.expected_best_of_n`,
  unbiased, from the same N samples), the analytic KL bound `log n - (n - 1) / n` of the best-of-n policy from the
  base policy (Beirami et al. 2024), and per-model statistics;
- `best_of_n.png`: reward against n, and reward against the KL bound;
- `index.html` (with `best_of_n_page.js`): the run browser's page, every prompt's candidates, the best marked.

Several models can compete (`candidate_models`): each samples N per prompt, and the best is chosen over all of
them alike. Their sample indices are offset (model m writes m*N .. m*N + N-1) so keys stay unique per prompt.
One process: do not launch it with several.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from rs_trainer.errors import ConfigError
from rs_trainer.phases import selection
from rs_trainer.phases.estimators import best_of_n_curve, kl_bound
from rs_trainer.run import data, seeds
from rs_trainer.run.browser import write_best_of_n_page
from rs_trainer.run.io import write_json, write_jsonl
from rs_trainer.run.layout import RunLayout
from rs_trainer.samples import key, with_prompt, with_scores

# ---------------------------------------------------------------- sampling and scoring


def _sample_model(name: str, index: int, prompts: list[dict], args, model_args) -> list[dict]:
    """N completions per prompt from model `name` (the `index`-th competitor), with round 0's sampling settings,
    through the `Generator` protocol: a `FrozenGenerator` loads it when opened and releases it after, so
    competitors never share memory, and it decodes as a run's teacher does (`generation_batch_size`,
    `generation_engine`, `generation_token_budget`)."""
    from accelerate import PartialState

    from rs_trainer.generators import PolicyWeights, RunContext
    from rs_trainer.generators.local import FrozenGenerator
    from rs_trainer.phases.generation import SamplingParams, check_prompt_lengths, encode_prompts
    from rs_trainer.run.progress import progress_bar

    n = args.num_generations
    params = SamplingParams.for_round(args, 0)
    run = RunContext(
        accelerator=PartialState(),
        tokenizer=None,  # each competitor renders its prompts with its own tokenizer
        model_args=model_args,
        model_path=name,
        batch_size=args.generation_batch_size,
        local_engine=args.generation_engine,
        token_budget=args.generation_token_budget,
        max_model_len=0,  # in-process transformers decoding: no engine to size
        server_log=None,
        served_model=None,
    )
    generator = FrozenGenerator(name, run)
    with generator.open(PolicyWeights(round=0, checkpoint=None, live=None, lora=False), params):
        prompt_ids = encode_prompts(generator.tokenizer, prompts)
        context = getattr(generator.model.config, "max_position_embeddings", None)
        check_prompt_lengths(prompts, prompt_ids, params.max_new_tokens, context)
        with progress_bar(len(prompts) * n, f"best-of-n sample {name}", "samples") as bar:
            rows = generator.generate(
                prompts,
                prompt_ids,
                n,
                params,
                seed=seeds.sampling_seed(args.seed, 0, stream=index),
                on_batch=lambda batch: bar.update(len(batch)),
            )
    return [{**row, "sample_index": index * n + row["sample_index"], "model": name} for row in rows]


def prompt_rows(prompts: list[dict], samples: list[dict], seed: int, prefer_shorter: bool) -> list[dict]:
    """One row per prompt: `best` (the `selection.best_of_n` pick over every model's samples, or None when no
    sample has a reward) and `candidates` (every sample, in sample_index order).

    Example: prompt "a" with samples (model "x", index 0, reward 0.2) and (model "y", index 1, reward 0.9) -> one
    row whose `best` is y's sample 1 and whose `candidates` list both.
    """
    best = set(selection.best_of_n(samples, seed=seed, prefer_shorter=prefer_shorter))
    fields = ("model", "sample_index", "completion", "reward", "rewards", "completion_tokens", "finished")
    by_prompt = {p["prompt_id"]: [] for p in prompts}
    for s in samples:
        by_prompt[s["prompt_id"]].append(s)
    rows = []
    for p in prompts:
        group = sorted(by_prompt[p["prompt_id"]], key=lambda s: s["sample_index"])
        candidates = [{k: s.get(k) for k in fields} for s in group]
        winner = next((c for c, s in zip(candidates, group, strict=True) if key(s) in best), None)
        rows.append({"prompt_id": p["prompt_id"], "prompt": p["prompt"], "best": winner, "candidates": candidates})
    return rows


def summarise(rows: list[dict], models: list[str], samples_per_model: int, pass_threshold: float) -> dict:
    """The best-of-n curve and KL bound over prompts whose every candidate has a reward, and per model its mean
    reward and the share of prompts whose best it wrote.

    Example: one prompt whose candidates are x: 0.0 and y: 1.0, best y -> `expected_reward` [0.5, 1.0],
    `kl_bound` [0.0, 0.193], per_model y `best_share` 1.0 and x 0.0.
    """
    complete = [[c["reward"] for c in r["candidates"]] for r in rows]
    complete = [r for r in complete if r and all(x is not None for x in r)]
    curve = best_of_n_curve(complete) if complete else []
    ns = list(range(1, len(curve) + 1))
    bests = [r["best"] for r in rows if r["best"] is not None]
    per_model = {}
    for m in models:
        rewards = [c["reward"] for r in rows for c in r["candidates"] if c["model"] == m and c["reward"] is not None]
        per_model[m] = {
            "reward_mean": statistics.fmean(rewards) if rewards else None,
            "best_share": sum(b["model"] == m for b in bests) / len(bests) if bests else None,
        }
    return {
        "n": ns,
        "expected_reward": curve,
        "kl_bound": [kl_bound(n) for n in ns],
        "num_prompts": len(rows),
        "num_prompts_in_curve": len(complete),
        "candidates_per_prompt": len(models) * samples_per_model,
        "samples_per_model": samples_per_model,
        "models": models,
        "per_model": per_model,
        "best_reward_mean": statistics.fmean(b["reward"] for b in bests) if bests else None,
        "best_pass_rate": sum(b["reward"] >= pass_threshold for b in bests) / len(rows) if rows else None,
    }


def _plot_curve(metrics: dict, path: str | Path) -> Path:
    """Expected best-of-n reward against n and against the KL bound, into `path` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(metrics["n"], metrics["expected_reward"], "o-")
    left.set(title="Expected best-of-n reward", xlabel="n (samples per prompt)", ylabel="reward")
    if len(metrics["n"]) > 8:
        left.set_xscale("log", base=2)
    right.plot(metrics["kl_bound"], metrics["expected_reward"], "o-", color="tab:orange")
    right.set(title="Reward against KL bound", xlabel="log n - (n-1)/n  (nats)", ylabel="reward")
    fig.suptitle(f"{metrics['num_prompts_in_curve']} prompts, {len(metrics['models'])} model(s)", fontsize=9)
    fig.tight_layout()
    from rs_trainer.run.report import save_figure

    return save_figure(fig, path)


def run(args, model_args, candidate_models: list[str] | None = None) -> dict:
    """Sample, score and pick the best for round 0's prompts with the policy and each of `candidate_models`;
    write the three outputs to `args.output_dir` and return the metrics."""
    from accelerate import PartialState

    from rs_trainer.rewards import resolve_scorers, score
    from rs_trainer.rewards.scoring import Scoring

    if PartialState().num_processes > 1:
        raise ConfigError("best_of_n runs in one process; start it with `python -m rs_trainer best-of-n`.")
    if args.for_round("temperature", 0) == "auto":
        raise ConfigError("`temperature: auto` is for training rounds; give best_of_n a number, such as 0.8.")
    models = [model_args.model_name_or_path, *(candidate_models or [])]
    if len(set(models)) != len(models):
        raise ConfigError(f"A model is named twice among the candidates {models}; name each once.")
    prompts = data.load_prompts(args, args.dataset_train_split)
    prompts = data.draw_round_prompts(prompts, args.prompts_per_round, args.seed, 0)
    scorers, weights = resolve_scorers(
        "reward_funcs", args.reward_funcs, args.reward_weights, args.reward_model_device, prompts, args.dataset_name
    )

    timings = {}
    start = time.perf_counter()
    samples = [row for m, name in enumerate(models) for row in _sample_model(name, m, prompts, args, model_args)]
    timings["timing/generate"] = time.perf_counter() - start
    start = time.perf_counter()
    samples = with_prompt(samples, {p["prompt_id"]: p for p in prompts})
    scoring = Scoring(scorers, weights, scorers, weights)
    try:  # a judge whose server this tool starts (`command`) is served for the scoring alone, after sampling
        scoring.serve_judges(PartialState(), RunLayout(Path(args.output_dir)).judge_log)
        samples = with_scores(samples, score(samples, scorers, weights))
    finally:
        scoring.stop_judges()
    timings["timing/score"] = time.perf_counter() - start

    rows = prompt_rows(prompts, samples, args.seed, args.prefer_shorter)
    metrics = {**summarise(rows, models, args.num_generations, args.pass_threshold), **timings}
    out = Path(args.output_dir)
    write_jsonl(out / "best_of_n.jsonl", rows)
    write_json(out / "best_of_n_metrics.json", metrics)
    if metrics["n"]:
        _plot_curve(metrics, out / "best_of_n.png")
    write_best_of_n_page(out, args.pass_threshold)
    return metrics
