"""Generation through a real OpenAI-compatible server against in-process generation, on the same work.

Work: the default recipe's arithmetic prompts, M prompts x N samples, T=0.8, up to 32 new tokens, embedded
SmolLM2-135M-Instruct in fp32. Sides, each timed from its first request to its last answer (model loading and
server start-up are excluded and reported apart):
- `in-process`: `rs_trainer.phases.generation.generate`, as the trainer's `local` engine runs it;
- `transformers serve`: started with `rs_trainer.run.servers.ManagedServer` on 127.0.0.1, sampled
  through `rs_trainer.generators.openai_client.OpenAIGenerator` (the `server` engine), `max_concurrency`
  requests at once;
- `transformers serve --continuous-batching`: the same, with the server batching requests together.

    python benchmarks/bench_server.py [--num_prompts 32 --num_samples 8 --max_concurrency 8]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def sampling_copy(src: str, dst: Path) -> str:
    """The model with a generation config that samples (`transformers serve` decodes greedily otherwise)."""
    from transformers import GenerationConfig

    shutil.copytree(src, dst, dirs_exist_ok=True)
    config = GenerationConfig.from_pretrained(dst)
    config.do_sample = True
    config.save_pretrained(dst)
    return str(dst)


def main():
    from _common import table

    from rs_trainer.generators.local import LocalGenerator
    from rs_trainer.generators.openai_client import OpenAIGenerator, check_endpoint
    from rs_trainer.generators.spec import GeneratorSpec
    from rs_trainer.phases.generation import SamplingParams, encode_prompts
    from rs_trainer.run.models import load_tokenizer, resolve_model_path
    from rs_trainer.run.servers import ManagedServer
    from rs_trainer.tasks.arithmetic import make_splits

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_prompts", type=int, default=32)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_concurrency", type=int, default=8)
    args = parser.parse_args()

    path = resolve_model_path("embedded:SmolLM2-135M-Instruct")
    tok = load_tokenizer(path)
    prompts = make_splits(args.num_prompts, 0, 1, 20, 42)["train"]
    ids = encode_prompts(tok, prompts)
    params = SamplingParams(temperature=0.8, max_new_tokens=args.max_new_tokens)
    rows = []

    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    load = time.perf_counter() - t0
    start = time.perf_counter()
    out = LocalGenerator(model, tok).generate(prompts, ids, args.num_samples, params, seed=0)
    seconds = time.perf_counter() - start
    rows.append(row("in-process", out, seconds, load))
    del model
    print(table(rows[-1:]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        served = sampling_copy(path, Path(tmp) / "model")
        # A fixed KV cache for continuous batching: on the CPU it otherwise reserves 90% of the free RAM.
        for flag in ("", " --continuous-batching --cb-num-blocks 32 --cb-max-batch-tokens 1024"):
            command = (
                f"{Path(sys.executable).parent / 'transformers'} serve --host {{host}} --port {{port}} --device cpu"
            )
            spec = GeneratorSpec(name="served", engine="server", command=command + flag)
            spec.max_concurrency = args.max_concurrency
            t0 = time.perf_counter()
            with ManagedServer(spec.command, served, Path(tmp) / "serve.log", name="served") as server:
                # Loads the model (start-up, not sampling); carries the sampling values, which CB keeps.
                check_endpoint(spec, server.base_url, served, params=params)
                load = time.perf_counter() - t0
                generator = OpenAIGenerator(spec, server.base_url, served, tok)
                start = time.perf_counter()
                out = generator.generate(prompts, ids, args.num_samples, params, seed=0)
                seconds = time.perf_counter() - start
            rows.append(row("transformers serve" + flag, out, seconds, load))
            print(table(rows[-1:]), flush=True)
    print(
        f"\nwork: {args.num_prompts} prompts x {args.num_samples} samples, <= {args.max_new_tokens} new tokens, T=0.8"
    )
    print(table(rows))
    base = rows[0]["tokens_per_s"]
    for r in rows[1:]:
        print(f"ratio {r['side']} / in-process: tokens/s {r['tokens_per_s'] / base:.2f}x")


def row(side: str, out: list[dict], seconds: float, startup: float) -> dict:
    tokens = sum(r["completion_tokens"] for r in out)
    distinct = len({(r["prompt_id"], r["completion"]) for r in out}) / len(out)
    return {
        "side": side,
        "samples": len(out),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "distinct": distinct,
        "startup_s": startup,
    }


if __name__ == "__main__":
    main()
