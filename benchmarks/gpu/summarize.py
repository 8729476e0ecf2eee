"""Merge the measurements of `run_on_gpu.sh` (one JSON file each) into `results.json` and the markdown lines for
BENCHMARKS.md (`benchmarks_gpu.md`). A step that failed or was skipped is listed with its exit code, never dropped.

    python benchmarks/gpu/summarize.py --parts /tmp/rs_gpu/parts --steps /tmp/rs_gpu/steps.tsv --out $OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def fmt(x, spec: str = ",.0f", missing: str = "-") -> str:
    return missing if x is None else format(x, spec)


def rounds_table(parts: dict) -> list[str]:
    rows = [v for k, v in sorted(parts.items()) if k.startswith("round_")]
    if not rows:
        return []
    lines = [
        "| run | accelerate config | round s | generate s | SFT s | eval s | save s | launch s | checkpoint |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, c = r.get("metrics", {}), r.get("checkpoint", {})
        check = r.get("error") or (
            f"{c.get('kind')} loads, logits finite, largest change {c.get('largest_weight_change_from_base', 0):.3g}"
            if c.get("loads")
            else "-"
        )
        timings = [m.get(f"timing/{k}") for k in ("round", "generate", "sft", "eval", "save")]
        cells = [fmt(t, ".1f") for t in timings] + [fmt(r.get("launch_seconds"), ".0f")]
        lines.append(f"| {r['run']} | `{r.get('accelerate_config')}` | {' | '.join(cells)} | {check} |")
    return ["### One rejection-sampling round", "", *lines, ""]


def decode_lines(d: dict) -> list[str]:
    w, roof = d["workload"], d["roofline"]
    lines = [
        f"### Generation: M={w['num_prompts']} x N={w['num_samples']}, {w['max_new_tokens']} new tokens, "
        f"T={w['temperature']}, bf16",
        "",
        "Decode roofline (weights plus KV read once per step, over the measured copy bandwidth):",
        "",
        *[f"- {line}" for line in roof["arithmetic"]],
        "",
        f"| engine | rows done | rows per batch | completion tokens/s | of the roofline ({roof['rows']} rows) | "
        "of the roofline at its own batch rows |",
        "|---|---|---|---|---|---|",
    ]
    for e in d["engines"]:
        if "error" in e:
            lines.append(f"| {e['engine']} | failed: {e['error'][:120]} | | | | |")
            continue
        total = w["num_prompts"] * w["num_samples"]
        lines.append(
            f"| {e['engine']} | {e['rows']} of {total} | {fmt(e.get('rows_per_batch'), 'd')} | "
            f"{fmt(e['tokens_per_s'])} | {e['fraction_of_roofline']:.1%} | "
            f"{fmt(e.get('fraction_of_own_batch_roofline'), '.1%')} |"
        )
    return [*lines, ""]


def sft_lines(d: dict) -> list[str]:
    seq = next((r["seq_len"] for r in d["runs"] if "seq_len" in r), "?")
    lines = [
        f"### SFT step at sequence length {seq} (the trainer's `train_steps`, bf16)",
        "",
        "| mode | parameters (trainable) | rows x tokens | tokens/s | step s | MFU | peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in d["runs"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | failed: {r['error'][:120]} | | | | | |")
            continue
        lines.append(
            f"| {r['mode']} | {r['parameters']:,} ({r['trainable_parameters']:,}) | {r['rows_per_step']} x "
            f"{r['seq_len']} | {fmt(r['tokens_per_s'])} | {r['step_seconds']:.3f} | {r['mfu']:.1%} | "
            f"{fmt(r.get('peak_memory_gib'), '.1f')} |"
        )
        notes.append(f"- {r['mode']}: {r['arithmetic']}")
    return [*lines, "", *notes, ""]


def rm_lines(d: dict) -> list[str]:
    w = d["workload"]
    lines = [
        f"### Reward-model scoring ({w['dtype']}): {w['num_samples']} inputs of {w['min_tokens']}-{w['max_tokens']} "
        f"tokens, budget {w['max_tokens_per_batch']} padded tokens",
        "",
        "| side | best s | real tokens/s | padding |",
        "|---|---|---|---|",
    ]
    for name, label in (("sorted", "length-sorted, token budget (ours)"), ("arrival", "arrival order")):
        s = d[name]
        label = label if name == "sorted" else f"{label}, {w['baseline_rows_per_batch']} rows a batch"
        lines.append(f"| {label} | {s['best_s']:.3f} | {fmt(s['real_tokens_per_s'])} | {s['padding_fraction']:.1%} |")
    lines.append("")
    lines.append(
        f"- Ratio sorted / arrival: **{d['ratio_sorted_over_arrival']:.2f}x** real tokens/s; scores agree within "
        f"{d['max_score_difference']:.3g}."
    )
    return [*lines, ""]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", required=True)
    parser.add_argument("--steps", default=None, help="TSV of step, exit code, seconds (from run_on_gpu.sh).")
    parser.add_argument("--source", default=None, help="A file naming the commit the tree came from.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    parts = {p.stem: json.loads(p.read_text()) for p in sorted(Path(args.parts).glob("*.json"))}
    steps = []
    if args.steps and Path(args.steps).exists():
        for line in Path(args.steps).read_text().splitlines():
            name, code, seconds = line.split("\t")
            steps.append({"step": name, "exit": code, "seconds": float(seconds)})
    source = Path(args.source).read_text().strip() if args.source and Path(args.source).exists() else "unknown"
    env = next((p["environment"] for p in parts.values() if "environment" in p), {})
    smoke = any(p.get("smoke") for p in parts.values())
    lines = [
        f"## GPU: {env.get('gpu', 'no GPU')}{' (SMOKE RUN ON THE CPU: the figures mean nothing)' if smoke else ''}",
        "",
        f"`bash benchmarks/gpu/run_on_gpu.sh` on {source}; python {env.get('python')}, torch {env.get('torch')}, "
        f"transformers {env.get('transformers')}, accelerate {env.get('accelerate')}, peft {env.get('peft')}, "
        f"trl {env.get('trl')}, datasets {env.get('datasets')}. Random weights in public shapes "
        "(benchmarks/gpu/common.py), bf16.",
        "",
    ]
    if "peaks" in parts:
        p = parts["peaks"]
        lines += [
            f"Measured peaks: copy bandwidth {p['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s (read + write of "
            f"{p['copy_bytes_moved'] / 2**30:.0f} GiB), bf16 matmul {p['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s "
            f"({p['matmul_n']}^3).",
            "",
        ]
    lines += rounds_table(parts)
    for key, render in (("decode", decode_lines), ("sft", sft_lines), ("reward_model", rm_lines)):
        if key in parts:
            lines += render(parts[key])
    if steps:
        lines += ["### Steps", "", "| step | exit | seconds |", "|---|---|---|"]
        lines += [f"| {s['step']} | {s['exit']} | {s['seconds']:.0f} |" for s in steps] + [""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"source": source, "steps": steps, **parts}, indent=2, default=str))
    (out / "benchmarks_gpu.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
