"""Check one finished rejection-sampling run: `round_0/metrics.json` exists, and `round_0/checkpoint` loads in
plain transformers (a LoRA adapter through PEFT on its base model), runs a forward pass with finite logits, and
differs from the base model (SFT changed something). Writes `round_<name>.json` with the round's metrics.

    python benchmarks/gpu/check_round.py --run /tmp/rs_gpu/runs/single_gpu-lora --base <policy folder> \
        --name single_gpu-lora --config accelerate_configs/single_gpu.yaml --out /tmp/rs_gpu/parts [--seconds 83]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

KEPT = ("timing/", "gen/policy/tokens", "rs/num_s", "rs/truncated_ratio", "train/", "eval/", "rs/kl_ref")


def load_checkpoint(path: Path, base: str):
    """The trained model: the full checkpoint, or the base model with the adapter merged in."""
    from transformers import AutoModelForCausalLM

    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        return PeftModel.from_pretrained(model, str(path)).merge_and_unload(), "lora adapter"
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16), "full model"


def largest_change(trained, base_path: str) -> float:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16).state_dict()
    return max((p.float() - base[n].float()).abs().max().item() for n, p in trained.state_dict().items() if n in base)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="The run's output_dir.")
    parser.add_argument("--base", required=True, help="The model the run started from.")
    parser.add_argument("--name", required=True)
    parser.add_argument("--config", default=None, help="The accelerate config it ran under.")
    parser.add_argument("--seconds", type=float, default=None, help="Wall time of the whole launch.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    run = Path(args.run)
    result = {"run": args.name, "accelerate_config": args.config, "launch_seconds": args.seconds}
    metrics_path = run / "round_0" / "metrics.json"
    if not metrics_path.exists():
        result["error"] = f"{metrics_path} is missing: the round did not finish"
        write_result(args.out, f"round_{args.name}", result)
        raise SystemExit(result["error"])
    metrics = json.loads(metrics_path.read_text())
    result["metrics"] = {k: v for k, v in metrics.items() if k.startswith(KEPT)}
    model, kind = load_checkpoint(run / "round_0" / "checkpoint", args.base)
    tokenizer = AutoTokenizer.from_pretrained(run / "round_0" / "checkpoint")
    ids = tokenizer("What is 2 + 3?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    result["checkpoint"] = {
        "kind": kind,
        "loads": True,
        "logits_finite": bool(torch.isfinite(logits).all()),
        "largest_weight_change_from_base": largest_change(model, args.base),
    }
    print(json.dumps(result, indent=1), flush=True)
    write_result(args.out, f"round_{args.name}", result)
    if not result["checkpoint"]["logits_finite"] or result["checkpoint"]["largest_weight_change_from_base"] == 0:
        raise SystemExit("the checkpoint loads but its logits are not finite or SFT changed no weight")


if __name__ == "__main__":
    main()
