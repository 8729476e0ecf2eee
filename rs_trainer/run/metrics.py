"""Round statistics over scored samples, and the end-of-run table. Pure functions."""

from __future__ import annotations

import statistics
from collections import defaultdict

from rs_trainer.samples import group_by_prompt, key, normalise_completion, passes

HELDOUT = "heldout"  # the evaluation set of `dataset_test_split` (or `eval_dataset_name`), as `eval_splits` names it


def eval_key(split: str, metric: str) -> str:
    """The name of an evaluation set's metric: `eval/<metric>` for the held-out set, the names runs had before there
    were other sets (so older outputs, tables and resumed runs read the same), `eval/<split>/<metric>` for the rest.

    >>> eval_key("heldout", "accuracy"), eval_key("words", "reward")
    ('eval/accuracy', 'eval/words/reward')
    """
    return f"eval/{metric}" if split == HELDOUT else f"eval/{split}/{metric}"


def other_eval_splits(*metrics: dict) -> list[str]:
    """The evaluation sets besides the held-out one that `metrics` report (`eval/<split>/accuracy`), sorted.

    >>> other_eval_splits({"eval/accuracy": 0.5, "eval/words/accuracy": 0.25}, {"eval/stories/accuracy": None})
    ['stories', 'words']
    """
    found = {k.split("/")[1] for m in metrics for k in m if k.startswith("eval/") and k.count("/") == 2}
    return sorted(s for s in found if any(eval_key(s, "accuracy") in m for m in metrics))


def eval_metrics(split: str, rewards: list[float | None], pass_threshold: float) -> dict:
    """An evaluation set's accuracy, the fraction of its prompts whose reward reaches `pass_threshold`, and reward,
    the mean of the rewards given (None when no scorer gave one).

    >>> eval_metrics("words", [1.0, 0.0, None, 1.0], 1.0)
    {'eval/words/accuracy': 0.5, 'eval/words/reward': 0.6666666666666666}
    """
    given = [x for x in rewards if x is not None]
    return {
        eval_key(split, "accuracy"): sum(x is not None and x >= pass_threshold for x in rewards) / len(rewards),
        eval_key(split, "reward"): sum(given) / len(given) if given else None,
    }


def _stats(values: list[float], prefix: str) -> dict:
    if not values:
        return {f"{prefix}_mean": None, f"{prefix}_max": None, f"{prefix}_std": None}
    return {
        f"{prefix}_mean": statistics.fmean(values),
        f"{prefix}_max": max(values),
        f"{prefix}_std": statistics.pstdev(values),
    }


def round_metrics(samples: list[dict], selected: set, pass_threshold: float) -> dict:
    """Reward statistics before and after selection, acceptance rate, pass@1 and pass@N, completion length.

    pass@1 is the mean over prompts of the fraction of its samples with reward >= `pass_threshold`; pass@N is the
    fraction of prompts with at least one such sample. Success is read from `verified_reward` where a sample has it
    (the `eval_reward_funcs` verdict, when a reward model gives `reward`).
    """
    rewards = [s["reward"] for s in samples if s["reward"] is not None]
    picked = [s for s in samples if key(s) in selected]
    chosen = [s["reward"] for s in picked if s["reward"] is not None]  # a matched-random draw may keep a None
    by_prompt = {pid: [passes(s, pass_threshold) for s in group] for pid, group in group_by_prompt(samples).items()}
    unique = {(s["prompt_id"], normalise_completion(s["completion"])) for s in samples}
    out = {
        "rs/num_prompts": len(by_prompt),
        "rs/num_samples": len(samples),
        "rs/num_selected": len(picked),
        "rs/acceptance_rate": len(picked) / len(samples) if samples else 0.0,
        "rs/pass@1": statistics.fmean(sum(v) / len(v) for v in by_prompt.values()) if by_prompt else 0.0,
        "rs/pass@n": statistics.fmean(any(v) for v in by_prompt.values()) if by_prompt else 0.0,
        "rs/completion_len": statistics.fmean(s["completion_tokens"] for s in samples) if samples else 0.0,
        "rs/truncated_ratio": statistics.fmean(not s["finished"] for s in samples) if samples else 0.0,
        "rs/unique_ratio": len(unique) / len(samples) if samples else 0.0,
        "rs/scorer_timeouts": sum(bool(s.get("timed_out")) for s in samples),
        "rs/judge_unparsed": sum(bool(s.get("judge_unparsed")) for s in samples),
    }
    if picked and any("verified_reward" in s for s in picked):  # how often a reward model picked a right answer
        verdicts = [s.get("verified_reward") for s in picked]
        out["rs/selected_pass_rate"] = statistics.fmean(v is not None and v >= pass_threshold for v in verdicts)
    out.update({f"rs/{k}": v for k, v in _stats(rewards, "reward").items()})
    out.update({f"rs/selected_{k}": v for k, v in _stats(chosen, "reward").items()})
    if any("verified_reward" in s for s in samples):
        out.update(watch_metrics(samples, selected, pass_threshold))
    out.update(generator_metrics(samples, selected, pass_threshold))
    return out


def watch_metrics(samples: list[dict], selected: set, pass_threshold: float) -> dict:
    """The watch on reward hacking, for a round whose samples carry both a proxy reward (`reward`: what selects,
    a reward model say) and a gold one (`verified_reward`, from `eval_reward_funcs`):

    - `watch/gold_mean`, `watch/gold_selected_mean`: the gold reward of every sample and of the selected ones,
      beside `rs/reward_mean` and `rs/selected_reward_mean`, their proxy rewards;
    - `watch/pairwise_agreement`: over the pairs of samples of one prompt whose gold rewards differ, the share the
      proxy orders the same way (a proxy tie counts one half: a constant proxy scores 0.5);
    - on the decidable prompts, those whose samples hold both a passing and a failing one (`watch/decidable_share`
      of the prompts): `watch/decidable_pick_pass_rate`, how often a selected sample passes, against
      `watch/decidable_random_pass_rate`, what a random pick of as many samples of the same prompts would pass on
      average. A selector no better than chance shows the two rates equal (rlhf-book's diagnostics, per round).

    Example: prompt "a" has proxy [0.9, 0.1] and gold [0, 1], sample 0 selected; prompt "b" passes with both ->
    agreement 0.0 (one pair, ordered the wrong way), decidable share 0.5, pick pass rate 0.0 against random 0.5.
    """
    gold = [s.get("verified_reward") for s in samples]
    picked = [s for s in samples if key(s) in selected]
    agree = pairs = 0.0
    decidable, hits, expected, total = 0, 0, 0.0, 0
    groups = group_by_prompt(samples)
    for group in groups.values():
        judged = [s for s in group if s["reward"] is not None and s.get("verified_reward") is not None]
        for i, a in enumerate(judged):
            for b in judged[i + 1 :]:
                if a["verified_reward"] != b["verified_reward"]:
                    pairs += 1
                    sign = (a["reward"] - b["reward"]) * (a["verified_reward"] - b["verified_reward"])
                    agree += 1.0 if sign > 0 else 0.5 if a["reward"] == b["reward"] else 0.0
        verdicts = [passes(s, pass_threshold) for s in group]
        if any(verdicts) and not all(verdicts):
            decidable += 1
            chosen = [v for s, v in zip(group, verdicts, strict=True) if key(s) in selected]
            hits += sum(chosen)
            expected += len(chosen) * sum(verdicts) / len(verdicts)
            total += len(chosen)
    given = [g for g in gold if g is not None]
    picked_gold = [s["verified_reward"] for s in picked if s.get("verified_reward") is not None]
    return {
        "watch/gold_mean": statistics.fmean(given) if given else None,
        "watch/gold_selected_mean": statistics.fmean(picked_gold) if picked_gold else None,
        "watch/pairwise_agreement": agree / pairs if pairs else None,
        "watch/decidable_share": decidable / len(groups) if groups else None,
        "watch/decidable_pick_pass_rate": hits / total if total else None,
        "watch/decidable_random_pass_rate": expected / total if total else None,
    }


def proxy_gold_turn(previous: dict | None, current: dict) -> str | None:
    """The over-optimisation sign of Gao et al. (2022), named: the proxy reward of the selected samples rose since
    the round before while their gold reward fell. None when it did not, or when a round lacks either.

    >>> turn = proxy_gold_turn({"rs/selected_reward_mean": 0.5, "watch/gold_selected_mean": 0.8},
    ...                        {"round": 1, "rs/selected_reward_mean": 0.7, "watch/gold_selected_mean": 0.6})
    >>> turn.split(": the reward model")[0]
    'round 1: the proxy reward of the selected samples rose (0.5 -> 0.7) while their gold reward fell (0.8 -> 0.6)'
    """
    names = ("rs/selected_reward_mean", "watch/gold_selected_mean")
    if previous is None or any(previous.get(n) is None or current.get(n) is None for n in names):
        return None
    (p0, g0), (p1, g1) = [tuple(m[n] for n in names) for m in (previous, current)]
    if not (p1 > p0 and g1 < g0):
        return None
    return (
        f"round {current['round']}: the proxy reward of the selected samples rose ({p0:.4g} -> {p1:.4g}) while their "
        f"gold reward fell ({g0:.4g} -> {g1:.4g}): the reward model may be over-optimised; compare "
        "watch/pairwise_agreement over the rounds"
    )


def generator_metrics(samples: list[dict], selected: set, pass_threshold: float) -> dict:
    """Per generator (`gen/<name>/...`): mean reward, pass rate (the fraction of its samples that succeed), its
    share of the selected set, and the tokens it generated.

    Example: a teacher with rewards [1, 1] and a policy with [0, 1], the teacher's first and the policy's second
    selected -> teacher pass_rate 1.0, selected_share 0.5; policy pass_rate 0.5, selected_share 0.5."""
    by_generator = defaultdict(list)
    for s in samples:
        by_generator[s.get("generator", "policy")].append(s)
    num_selected = sum(key(s) in selected for s in samples)
    out = {}
    for name, rows in sorted(by_generator.items()):
        rewards = [s["reward"] for s in rows if s["reward"] is not None]
        picked = sum(key(s) in selected for s in rows)
        out[f"gen/{name}/samples"] = len(rows)
        out[f"gen/{name}/reward_mean"] = statistics.fmean(rewards) if rewards else None
        out[f"gen/{name}/pass_rate"] = statistics.fmean(passes(s, pass_threshold) for s in rows)
        out[f"gen/{name}/selected_share"] = picked / num_selected if num_selected else 0.0
        out[f"gen/{name}/tokens"] = sum(s["completion_tokens"] for s in rows)
    return out


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_table(history: list[dict]) -> str:
    """One row per round: reward, acceptance, pass@1/pass@N, held-out accuracy before and after, and the accuracy
    of every other evaluation set (`<split>_acc`)."""
    cols = [
        ("round", "round"),
        ("reward_mean", "rs/reward_mean"),
        ("acceptance", "rs/acceptance_rate"),
        ("pass@1", "rs/pass@1"),
        ("pass@n", "rs/pass@n"),
        ("eval_acc_before", "eval/accuracy_before"),
        ("eval_acc_after", "eval/accuracy"),
        *((f"{split}_acc", eval_key(split, "accuracy")) for split in other_eval_splits(*history)),
        ("seconds", "timing/round"),
    ]
    cells = [[name for name, _ in cols]] + [[_fmt(m.get(key)) for _, key in cols] for m in history]
    widths = [max(len(row[c]) for row in cells) for c in range(len(cols))]
    lines = [" | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
