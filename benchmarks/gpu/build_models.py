"""Build random-weight models from public shapes (`common.SHAPES`) as plain transformers folders: a causal LM (the
policy) and, with `--reward_model`, a one-output sequence classifier of the same shape. Each folder gets the
tokenizer from `--tokenizer` (a folder with tokenizer.json and a chat template) and loads with `from_pretrained`.

    python benchmarks/gpu/build_models.py --tokenizer .gpu_wheels/tokenizer --out /tmp/rs_gpu/models \
        [--shape llama-3.2-1b] [--reward_model] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHAPES, model_config, param_count, pick_device  # noqa: E402


def build(kind: str, shape: str, tokenizer, out: Path, device: torch.device, smoke: bool, seed: int = 0) -> dict:
    """Initialise on `device` (fast on a GPU), save in bf16, and return what was built."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig

    config = model_config(shape, tokenizer, tiny=smoke)
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.device(device):
        if kind == "policy":
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        else:
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config, dtype=torch.bfloat16)
    path = out / (f"{shape}-tiny" if smoke else shape) / kind
    if kind == "policy":
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    info = {
        "kind": kind,
        "shape": shape,
        "path": str(path),
        "parameters": param_count(model),
        "architecture": type(model).__name__,
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(info), flush=True)
    del model
    return info


def main():
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="Folder holding the tokenizer (with a chat template).")
    parser.add_argument("--out", required=True, help="Models land in <out>/<shape>/{policy,reward_model}.")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    parser.add_argument("--reward_model", action="store_true", help="Also build a one-output reward model.")
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes, on the CPU when there is no GPU.")
    args = parser.parse_args()
    device = pick_device(args.smoke)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if not tokenizer.chat_template:
        raise SystemExit(f"{args.tokenizer}: the tokenizer has no chat template; the trainer renders prompts with it.")
    for kind in ["policy"] + (["reward_model"] if args.reward_model else []):
        build(kind, args.shape, tokenizer, Path(args.out), device, args.smoke)


if __name__ == "__main__":
    main()
