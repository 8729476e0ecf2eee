"""What a person reads after each round: `report.png` and a table of best and worst samples. Pure functions of
the round history and samples; matplotlib is imported inside, with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

from rs_trainer.run.metrics import HELDOUT, eval_key, other_eval_splits
from rs_trainer.samples import group_by_prompt


def plot_report(history: list[dict], samples: list[dict], base_eval: dict | None, path: str | Path) -> Path:
    """Draw reward mean and max (with the gold reward beside a proxy's: `plot_gold`), acceptance and pass rates
    (per generator too), the accuracy of every evaluation set (`base_eval`: the base model's, drawn at round -1),
    KL to the base model and entropy per round, the last round's reward distribution before and after selection,
    the sampling temperature per round and the `temperature: auto` probes' tables, into `path` (written
    atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [m["round"] for m in history]
    fig, axes = plt.subplots(4, 2, figsize=(10, 13))
    ax = axes[0][0]
    ax.plot(rounds, [m.get("rs/reward_mean") for m in history], "o-", label="mean (all samples)")
    ax.plot(rounds, [m.get("rs/reward_max") for m in history], "s--", label="max")
    ax.plot(rounds, [m.get("rs/selected_reward_mean") for m in history], "^-", label="mean (selected)")
    ax.set(title="Reward per round", xlabel="round", ylabel="reward")
    ax.legend(fontsize=8)
    plot_gold(ax, history, rounds)
    ax = axes[0][1]
    ax.plot(rounds, [m.get("rs/acceptance_rate") for m in history], "o-", label="acceptance rate")
    ax.plot(rounds, [m.get("rs/pass@1") for m in history], "s--", label="pass@1 (samples)")
    ax.plot(rounds, [m.get("rs/pass@n") for m in history], "^--", label="pass@N (samples)")
    generators = sorted({k.split("/")[1] for m in history for k in m if k.startswith("gen/")})
    if len(generators) > 1:  # where the selected set came from, and how often each generator was right
        for name in generators:
            share = ax.plot(
                rounds,
                [m.get(f"gen/{name}/selected_share") for m in history],
                "d-",
                label=f"{name}: share of selected",
            )
            ax.plot(
                rounds,
                [m.get(f"gen/{name}/pass_rate") for m in history],
                ":",
                color=share[0].get_color(),
                label=f"{name}: pass rate",
            )
    ax.set(title="Acceptance and pass rates", xlabel="round", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    plot_accuracy(axes[1][0], history, base_eval or {})
    ax = axes[1][1]
    rewards = [s["reward"] for s in samples if s["reward"] is not None]
    chosen = [s["reward"] for s in samples if s.get("selected") and s["reward"] is not None]
    if rewards:
        import numpy as np

        # One set of bin edges for both histograms, so the selected bars sit inside the bars of all samples.
        bins = np.histogram_bin_edges(rewards, bins=min(30, max(2, len(set(rewards)))))
        ax.hist(rewards, bins=bins, alpha=0.6, label=f"all ({len(rewards)})")
        if chosen:
            ax.hist(chosen, bins=bins, alpha=0.8, label=f"selected ({len(chosen)})")
        ax.legend(fontsize=8)
    ax.set(title=f"Reward distribution, round {rounds[-1] if rounds else '-'}", xlabel="reward", ylabel="samples")
    for ax, key, title in (
        (axes[2][0], "rs/kl_ref", "KL(policy ‖ base) on its own samples (nats per sample)"),
        (axes[2][1], "rs/entropy", "Policy entropy on its own samples (nats per token)"),
    ):
        values = [m.get(key) for m in history]
        if any(v is not None for v in values):
            ax.plot(rounds, values, "o-", color="tab:purple")
        else:
            ax.text(0.5, 0.5, "not measured\n(kl_to_base: off, or no LoRA)", ha="center", va="center", fontsize=9)
        ax.set(title=title, xlabel="round")
        ax.title.set_fontsize(9)
    ax = axes[3][0]
    probed = [m for m in history if m.get("probe/temperature") is not None]
    for m in probed:
        grid = sorted(float(k.split("=")[1].split("/")[0]) for k in m if k.endswith("/best_of_n"))
        line = ax.plot(grid, [m[f"probe/T={t:g}/best_of_n"] for t in grid], "o-", label=f"round {m['round']}")
        best = m["probe/temperature"]
        ax.plot([best], [m[f"probe/T={best:g}/best_of_n"]], "*", markersize=14, color=line[0].get_color())
    if probed:
        ax.legend(fontsize=8, title="★ chosen", title_fontsize=8)
    else:
        ax.text(0.5, 0.5, "no probe (no round with `temperature: auto`)", ha="center", va="center", fontsize=9)
    ax.set(title="Temperature probe: expected best-of-N reward", xlabel="temperature", ylabel="reward")
    ax = axes[3][1]
    ax.plot(rounds, [m.get("rs/temperature") for m in history], "o-", color="tab:red")
    ax.set(title="Sampling temperature (★ chosen by a probe)", xlabel="round")
    for m in probed:
        ax.plot([m["round"]], [m["probe/temperature"]], "*", markersize=14, color="tab:red")
    from matplotlib.ticker import MaxNLocator

    for ax in (axes[0][0], axes[0][1], axes[1][0], axes[2][0], axes[2][1], axes[3][1]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    fig.tight_layout()
    return save_figure(fig, path)


def plot_gold(ax, history: list[dict], rounds: list[int]) -> None:
    """Where a verifier judges beside the proxy that selects: the gold reward of the selected and of all samples on
    a second axis, and a red ✕ on each round where the proxy rose while the gold fell (`proxy_gold_turn`)."""
    gold = [m.get("watch/gold_selected_mean") for m in history]
    if all(g is None for g in gold):
        return
    ax.set(title="Reward per round: proxy (left), gold (right, black)", ylabel="proxy reward")
    ax.legend(fontsize=7, loc="upper left")
    twin = ax.twinx()
    twin.plot(rounds, gold, "v-", color="black", label="gold (selected)")
    twin.plot(rounds, [m.get("watch/gold_mean") for m in history], "D:", color="black", label="gold (all samples)")
    turned = [m["round"] for m in history if m.get("watch/proxy_up_gold_down")]
    if turned:
        marks = [gold[rounds.index(r)] for r in turned]
        twin.plot(turned, marks, "x", color="tab:red", markersize=12, label="proxy up, gold down")
    twin.set(ylabel="gold reward (verifier)")
    twin.legend(fontsize=7, loc="lower right")


def plot_accuracy(ax, history: list[dict], base_eval: dict) -> None:
    """Greedy accuracy per round of every evaluation set, the base model's at round -1: the held-out set in green
    with its values written, each other set (`eval/<split>/accuracy`) a dashed line of its own."""
    rounds = [m["round"] for m in history]
    others = other_eval_splits(base_eval, *history)
    for split in (HELDOUT, *others):
        key = eval_key(split, "accuracy")
        base = base_eval.get(key)
        xs = ([-1] if base is not None else []) + rounds
        ys = ([base] if base is not None else []) + [m.get(key) for m in history]
        if all(y is None for y in ys):
            continue
        if split != HELDOUT:
            ax.plot(xs, ys, "s--", alpha=0.8, label=split)
            continue
        ax.plot(xs, ys, "o-", color="tab:green", label="heldout")
        for x, y in zip(xs, ys, strict=True):
            if y is not None:
                ax.annotate(f"{y:.0%}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    if others:
        ax.legend(fontsize=8)
    ax.set(title="Greedy accuracy per evaluation set (round -1 = base model)", xlabel="round", ylim=(0, 1.05))


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure to `path` atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp, dpi=90)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


def sample_table(samples: list[dict], num_prompts: int = 5) -> list[dict]:
    """The best and worst completion (by reward, then sample_index) of the first `num_prompts` prompts (sorted by
    prompt_id), for reading."""
    groups = group_by_prompt([s for s in samples if s["reward"] is not None])
    rows = []
    for pid in sorted(groups)[:num_prompts]:
        ranked = sorted(groups[pid], key=lambda s: (-s["reward"], s["sample_index"]))
        best, worst = ranked[0], ranked[-1]
        rows.append(
            {
                "prompt_id": pid,
                "prompt": best["prompt"][-1]["content"],
                "best": best["completion"],
                "best_reward": best["reward"],
                "worst": worst["completion"],
                "worst_reward": worst["reward"],
            }
        )
    return rows


def samples_markdown(rows: list[dict], title: str) -> str:
    """`sample_table`'s rows as Markdown, whole: a section per prompt, each text in a fenced block (a chain of
    thought keeps its last line, where the answer is).

    >>> print(samples_markdown([{"prompt_id": "q1", "prompt": "2+2?", "best": "4", "best_reward": 1.0,
    ...                          "worst": "so 5", "worst_reward": 0.0}], "Round 0"))
    # Round 0: best and worst samples
    <BLANKLINE>
    ## q1
    <BLANKLINE>
    ````text
    2+2?
    ````
    <BLANKLINE>
    best (reward 1.000):
    <BLANKLINE>
    ````text
    4
    ````
    <BLANKLINE>
    worst (reward 0.000):
    <BLANKLINE>
    ````text
    so 5
    ````
    <BLANKLINE>
    """
    lines = [f"# {title}: best and worst samples", ""]
    if not rows:
        return "\n".join([*lines, "(no scored samples)", ""])

    def block(text) -> list[str]:
        return ["````text", str(text), "````", ""]  # four backticks: a completion's own ``` fences stay inside

    for row in rows:
        lines += [f"## {row['prompt_id']}", "", *block(row["prompt"])]
        for side in ("best", "worst"):
            lines += [f"{side} (reward {row[side + '_reward']:.3f}):", "", *block(row[side])]
    return "\n".join(lines)
