#!/usr/bin/env bash
# The default recipe end to end with the in-process engine (`make demo`) and with colocated vLLM (`make demo-vllm`),
# at seeds 42 and 43, one run after the other; then each run's held-out accuracy per round and wall time per phase.
#   bash benchmarks/compare_engines_demo.sh [outputs/engines]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/engines}
for seed in 42 43; do
  for engine in local vllm; do
    recipe=recipes/smollm2/arithmetic_lora.yaml
    [ "$engine" = vllm ] && recipe=recipes/smollm2/arithmetic_vllm.yaml
    [ -f "$OUT/$engine-$seed/summary.json" ] && continue
    .venv/bin/accelerate launch --config_file accelerate_configs/cpu.yaml -m rs_trainer --config "$recipe" \
      --output_dir "$OUT/$engine-$seed" --seed "$seed" --eval_splits heldout --report_to none \
      > "$OUT-$engine-$seed.log" 2>&1
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
phases = ["generate", "score", "kl", "sft", "eval", "round"]
print("| run | base | round 0 | round 1 | " + " | ".join(f"{p} (s, r0+r1)" for p in phases) + " | rs/kl_ref r1 | rs/entropy r1 |")
print("|---" * (6 + len(phases)) + "|")
for run in sorted(p for p in out.iterdir() if (p / "summary.json").exists()):
    base = json.loads((run / "base_eval.json").read_text())["eval/accuracy"]
    rounds = [json.loads((run / f"round_{r}" / "metrics.json").read_text()) for r in (0, 1)]
    acc = [f"{m['eval/accuracy']:.1%}" for m in rounds]
    times = [f"{sum(m.get(f'timing/{p}', 0) for m in rounds):.0f}" for p in phases]
    ent = rounds[1].get("rs/entropy")
    print(f"| {run.name} | {base:.1%} | {acc[0]} | {acc[1]} | " + " | ".join(times)
          + f" | {rounds[1]['rs/kl_ref']:.3f} | {'-' if ent is None else f'{ent:.3f}'} |")
PY
