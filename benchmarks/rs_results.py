"""Held-out accuracy per round and generated tokens of finished runs, as a Markdown table (README's results).

    python benchmarks/rs_results.py outputs/<run> [outputs/<run> ...]

Generated tokens count every completion a run sampled: the rows of each round's `generations.jsonl` (the
rationalization's hinted samples included) plus the tokens a `temperature: auto` probe sampled at the
temperatures it did not choose (`probe/extra_tokens`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run_row(folder: Path) -> dict:
    base = json.loads((folder / "base_eval.json").read_text())["eval/accuracy"]
    rounds, tokens, extra = [], 0, []
    r = 0
    while (folder / f"round_{r}" / "metrics.json").exists():
        metrics = json.loads((folder / f"round_{r}" / "metrics.json").read_text())
        rows = [json.loads(line) for line in (folder / f"round_{r}" / "generations.jsonl").open()]
        probe = metrics.get("probe/extra_tokens", 0)
        tokens += sum(row["completion_tokens"] for row in rows) + probe
        rounds.append(metrics)
        extra.append(
            {
                "temperature": metrics.get("rs/temperature"),
                "selected": metrics.get("rs/num_selected"),
                "rationalized": metrics.get("rs/rationalized"),
                "probe_tokens": probe,
                "pass@1": metrics.get("rs/pass@1"),
            }
        )
        r += 1
    return {
        "run": folder.name,
        "base": base,
        "accuracy": [m["eval/accuracy"] for m in rounds],
        "tokens": tokens,
        "rounds": extra,
    }


def main(paths: list[str]) -> None:
    rows = [run_row(Path(p)) for p in paths]
    width = max(len(r["accuracy"]) for r in rows)
    print("| run | base | " + " | ".join(f"round {i}" for i in range(width)) + " | generated tokens | per round |")
    print("|---" * (width + 4) + "|")
    for row in rows:
        acc = [f"{a:.1%}" for a in row["accuracy"]] + ["-"] * (width - len(row["accuracy"]))
        detail = "; ".join(
            f"T={x['temperature']}, sel {x['selected']}"
            + (f", rat {x['rationalized']}" if x["rationalized"] else "")
            + (f", probe {x['probe_tokens']} tok" if x["probe_tokens"] else "")
            for x in row["rounds"]
        )
        print(f"| {row['run']} | {row['base']:.1%} | " + " | ".join(acc) + f" | {row['tokens']} | {detail} |")


if __name__ == "__main__":
    main(sys.argv[1:])
