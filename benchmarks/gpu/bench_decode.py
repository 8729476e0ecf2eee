"""Generation throughput against the decode roofline, M prompts x N samples (default 512 x 16), 256 new tokens,
T=0.8, bf16, on a random-weight model (`build_models.py`):

- `ours`: `rs_trainer.phases.generation.generate` (one prefill per prompt, finished rows dropped), its defaults;
- `hf`: `model.generate` on the N-times repeated prompts, one left-padded batch per chunk of prompts;
- `cb`: transformers' continuous batching, `model.generate_batch` on the N-times repeated prompts.

`ours` and `hf` take the prompts in chunks (`--chunk_prompts`) and stop after the chunk that passes
`--max_seconds`; `cb` is calibrated on one chunk, then runs as many prompts as that rate fits in `--max_seconds`,
in one call (its batching needs many requests at once). Tokens/s counts completion tokens, the end token included.

The roofline is the decode step's bytes over the measured memory bandwidth (`peaks.py`): a step of B rows reads
every weight once and the KV cache of every row, so at mean context c (prompt + half the new tokens)
`step bytes = weight bytes + B x c x KV bytes per token`, and the roofline is `B / (step bytes / bandwidth)` tokens/s.
Prefill and sampling are left out, so the roofline is an upper bound. B is the rows of one chunk (chunk x N).

    python benchmarks/gpu/bench_decode.py --model /tmp/rs_gpu/models/llama-3.2-1b/policy --out /tmp/rs_gpu/parts \
        [--peaks /tmp/rs_gpu/parts/peaks.json] [--engines ours,hf,cb] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import gb, load_peaks, param_count, pick_device, sync, write_result  # noqa: E402

from rs_trainer.run.memory import kv_bytes_per_token  # noqa: E402


def useful(tokens: list[int], eos_ids: set[int]) -> int:
    """Completion tokens up to and including the first end token."""
    return next((i + 1 for i, t in enumerate(tokens) if t in eos_ids), len(tokens))


def run_ours(model, tokenizer, prompts, ids, n, params, chunk, seconds, seed=0) -> dict:
    from rs_trainer.phases.generation import default_batch_size, generate

    done = tokens = 0
    sync(model.device)
    start = time.perf_counter()
    for first in range(0, len(prompts), chunk):
        part = slice(first, first + chunk)
        rows = generate(
            model, tokenizer, prompts[part], n, params, seed=seed + first, prompt_ids=ids[part], engine="rs"
        )
        tokens += sum(r["completion_tokens"] for r in rows)
        done += len(rows)
        if time.perf_counter() - start > seconds:
            break
    sync(model.device)
    return {
        "rows": done,
        "tokens": tokens,
        "seconds": time.perf_counter() - start,
        "rows_per_batch": min(default_batch_size(model.device), chunk * n),  # its default, as a run has it
    }


def run_hf(model, tokenizer, ids, n, params, chunk, seconds, eos_ids, seed=0) -> dict:
    pad = tokenizer.pad_token_id
    done = tokens = 0
    sync(model.device)
    start = time.perf_counter()
    for first in range(0, len(ids), chunk):
        seqs = [s for s in ids[first : first + chunk] for _ in range(n)]
        width = max(len(s) for s in seqs)
        input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=model.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=model.device)
        torch.manual_seed(seed + first)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            pad_token_id=pad,
            eos_token_id=sorted(eos_ids),
            **params.generate_kwargs(),
        )
        tokens += sum(useful(row, eos_ids) for row in out[:, width:].tolist())
        done += len(seqs)
        if time.perf_counter() - start > seconds:
            break
    sync(model.device)
    return {"rows": done, "tokens": tokens, "seconds": time.perf_counter() - start, "rows_per_batch": chunk * n}


def run_cb_call(model, ids, n, params, eos_ids, pad) -> tuple[int, int, float, int]:
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=True,
        temperature=params.temperature,
        top_p=params.top_p,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad,
    )
    inputs = [s for s in ids for _ in range(n)]
    sync(model.device)
    start = time.perf_counter()
    results = model.generate_batch(inputs=inputs, generation_config=config, progress_bar=False)
    sync(model.device)
    seconds = time.perf_counter() - start
    outputs = list(results.values())
    failed = sum(1 for o in outputs if getattr(o, "error", None)) + len(inputs) - len(outputs)
    tokens = sum(useful(list(o.generated_tokens), eos_ids) for o in outputs if not getattr(o, "error", None))
    return len(inputs) - failed, tokens, seconds, failed


def run_cb(model, tokenizer, ids, n, params, chunk, seconds, eos_ids) -> dict:
    """Calibrate on one chunk, then one call with as many prompts as that rate fits in `seconds`."""
    rows, tokens, took, failed = run_cb_call(model, ids[:chunk], n, params, eos_ids, tokenizer.pad_token_id)
    rate = tokens / took if took else 0.0
    fits = int(rate * seconds / max(n * params.max_new_tokens, 1))
    prompts = max(chunk, min(len(ids), fits))
    result = {"calibration": {"rows": rows, "tokens": tokens, "seconds": took, "failed": failed}}
    if prompts > chunk:
        rows, tokens, took, failed = run_cb_call(model, ids[:prompts], n, params, eos_ids, tokenizer.pad_token_id)
    return {
        **result,
        "rows": rows,
        "tokens": tokens,
        "seconds": took,
        "failed_requests": failed,
        "rows_per_batch": None,
    }


def roofline(model, peaks: dict, rows: int, mean_prompt: float, new_tokens: int) -> dict:
    weights = param_count(model) * next(model.parameters()).element_size()
    kv = kv_bytes_per_token(model.config)
    context = mean_prompt + (new_tokens + 1) / 2
    kv_read = rows * context * kv
    step_s = (weights + kv_read) / peaks["bandwidth_bytes_per_s"]
    tokens_per_s = rows / step_s
    c = model.config
    lines = [
        f"weights: {param_count(model):,} parameters x {next(model.parameters()).element_size()} B = {gb(weights)}",
        f"KV per token: 2 (K, V) x {c.num_hidden_layers} layers x {c.num_key_value_heads} KV heads x "
        f"{kv // (4 * c.num_hidden_layers * c.num_key_value_heads)} head dim x 2 B = {kv:,} B",
        f"mean context: {mean_prompt:.1f} prompt + ({new_tokens} + 1) / 2 new = {context:.1f} tokens",
        f"KV read per step: {rows} rows x {context:.1f} x {kv:,} B = {gb(kv_read)}",
        f"step: ({gb(weights)} + {gb(kv_read)}) / {peaks['bandwidth_bytes_per_s'] / 1e12:.3f} TB/s = "
        f"{step_s * 1e3:.3f} ms -> {rows} rows / step = {tokens_per_s:,.0f} tokens/s",
    ]
    return {
        "rows": rows,
        "weight_bytes": weights,
        "kv_bytes_per_token": kv,
        "mean_context": context,
        "kv_bytes_per_step": kv_read,
        "step_seconds": step_s,
        "tokens_per_s": tokens_per_s,
        "arithmetic": lines,
    }


def run_engine(name: str, model, tokenizer, prompts, ids, params, eos_ids, args) -> dict:
    """One engine's measurement after a small warm-up call; an engine that fails (an API another transformers
    version lacks) returns its error, so the others still run."""
    from rs_trainer.phases.generation import SamplingParams

    warm = SamplingParams(temperature=0.8, max_new_tokens=4)
    n, chunk, seconds = args.num_samples, args.chunk_prompts, args.max_seconds
    try:
        with torch.no_grad():
            if name == "ours":
                run_ours(model, tokenizer, prompts[:1], ids[:1], 2, warm, 1, 0)
                return run_ours(model, tokenizer, prompts, ids, n, params, chunk, seconds)
            if name == "hf":
                run_hf(model, tokenizer, ids[:1], 2, warm, 1, 0, eos_ids)
                return run_hf(model, tokenizer, ids, n, params, chunk, seconds, eos_ids)
            if name == "cb":
                return run_cb(model, tokenizer, ids, n, params, chunk, seconds, eos_ids)
        raise ValueError(f"unknown engine {name!r}; choose from ours, hf, cb")
    except Exception as err:
        print(f"{name}: FAILED {type(err).__name__}: {err}", flush=True)
        return {"error": f"{type(err).__name__}: {err}"[:500]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--peaks", default=None, help="peaks.json from peaks.py; measured now when missing.")
    parser.add_argument("--engines", default="ours,hf,cb")
    parser.add_argument("--num_prompts", type=int, default=512)
    parser.add_argument("--num_samples", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--chunk_prompts", type=int, default=32)
    parser.add_argument("--max_seconds", type=float, default=45.0, help="Per engine, after its warm-up.")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.num_prompts, args.num_samples, args.max_new_tokens, args.chunk_prompts = 6, 2, 8, 3
    from transformers import AutoModelForCausalLM

    from rs_trainer.phases.generation import SamplingParams, _eos_ids, encode_prompts
    from rs_trainer.run.models import load_tokenizer
    from rs_trainer.tasks.arithmetic import make_splits

    device = pick_device(args.smoke)
    peaks = load_peaks(args.peaks, device, args.smoke)
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to(device).eval()
    prompts = make_splits(args.num_prompts, 0, 10, 99, 0)["train"]
    ids = encode_prompts(tokenizer, prompts)
    eos_ids = set(_eos_ids(model, tokenizer))
    params = SamplingParams(temperature=0.8, top_p=1.0, max_new_tokens=args.max_new_tokens)
    mean_prompt = statistics.mean(len(s) for s in ids)
    roof = roofline(model, peaks, args.chunk_prompts * args.num_samples, mean_prompt, args.max_new_tokens)
    print("\n".join(["decode roofline:", *roof["arithmetic"]]), flush=True)
    workload = {
        "num_prompts": args.num_prompts,
        "num_samples": args.num_samples,
        "max_new_tokens": args.max_new_tokens,
        "chunk_prompts": args.chunk_prompts,
        "max_seconds": args.max_seconds,
        "mean_prompt_tokens": mean_prompt,
        "model": args.model,
        "dtype": "bfloat16",
        "temperature": 0.8,
    }
    engines = []
    for name in args.engines.split(","):
        res = run_engine(name, model, tokenizer, prompts, ids, params, eos_ids, args)
        if "tokens" in res:
            res["tokens_per_s"] = res["tokens"] / res["seconds"]
            res["fraction_of_roofline"] = res["tokens_per_s"] / roof["tokens_per_s"]
            if res.get("rows_per_batch"):  # against the roofline at the rows it actually decodes at once
                own = roofline(model, peaks, res["rows_per_batch"], mean_prompt, args.max_new_tokens)
                res["fraction_of_own_batch_roofline"] = res["tokens_per_s"] / own["tokens_per_s"]
            print(
                f"{name}: {res['rows']} of {args.num_prompts * args.num_samples} rows, {res['tokens']} tokens in "
                f"{res['seconds']:.2f} s = {res['tokens_per_s']:,.0f} tokens/s = "
                f"{res['fraction_of_roofline']:.1%} of the roofline",
                flush=True,
            )
        engines.append({"engine": name, **res})
        # Written after every engine: a later one that hangs past the step's timeout loses only itself.
        write_result(
            args.out, "decode", {"workload": workload, "roofline": roof, "engines": engines, "smoke": args.smoke}
        )


if __name__ == "__main__":
    main()
