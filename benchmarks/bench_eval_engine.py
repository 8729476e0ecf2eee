"""Evaluation time of `make demo`'s recipe with `engine: vllm`, before and after evaluation went through the policy's
generator (issue 38): before, every evaluation decoded in process with `transformers` (the `rs` sampler, the
recipe's `generation_batch_size` and `generation_engine`); after, the colocated vLLM engine decodes it.

The work is the recipe's own evaluation: its sets (`heldout` and the other forms), greedy, `eval_max_new_tokens`,
on the base model (the evaluation before round 0) and, with `--adapter`, on a round's LoRA adapter (the evaluation
after that round; pass a demo run's `round_0/checkpoint`). Both sides run in one process, one after the other,
`--repeats` times in alternation, and each is timed from its first request to its last answer; the engine's start
and the adapter's hand-over are reported apart. Each side's accuracy (`numeric_answer`) is printed too: greedy
outputs of two engines need not agree to the token.

    python benchmarks/bench_eval_engine.py [--recipe recipes/smollm2/arithmetic_lora.yaml] \
        [--adapter /tmp/demo/round_0/checkpoint] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    import torch
    from _common import table
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    from rs_trainer.cli import parse_args
    from rs_trainer.generators import GeneratorSpec, PolicyWeights, RunContext
    from rs_trainer.generators.local import LocalGenerator
    from rs_trainer.generators.vllm_engine import VLLMGenerator
    from rs_trainer.phases.generation import SamplingParams, encode_prompts
    from rs_trainer.rewards.verifiers import numeric_answer
    from rs_trainer.run.models import load_tokenizer, resolve_model_path
    from rs_trainer.trainer.setup import load_eval_sets

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/smollm2/arithmetic_lora.yaml")
    parser.add_argument("--adapter", type=Path, help="a round's LoRA checkpoint folder (a demo run's)")
    parser.add_argument("--repeats", type=int, default=2)
    cli = parser.parse_args()

    args, model_args = parse_args(["--config", cli.recipe])
    path = str(resolve_model_path(model_args.model_name_or_path))
    tokenizer = load_tokenizer(path)
    prompts = [p for split in load_eval_sets(args).values() for p in split]
    ids = encode_prompts(tokenizer, prompts)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=args.eval_max_new_tokens)
    longest = max(map(len, ids)) + args.eval_max_new_tokens

    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    policies = [("base", 0, None, base)]
    if cli.adapter:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), cli.adapter)
        policies.append(("round 0's adapter", 1, cli.adapter, tuned.eval()))

    run = RunContext(PartialState(), tokenizer, model_args, path, args.generation_batch_size,
                     args.generation_engine, args.generation_token_budget, longest, None, None)  # fmt: skip
    engine = VLLMGenerator(GeneratorSpec("policy", engine="vllm"), run)
    local = LocalGenerator(None, tokenizer, args.generation_batch_size, args.generation_engine,
                           token_budget=args.generation_token_budget)  # fmt: skip

    def right(rows) -> float:
        by_id = {p["prompt_id"]: p for p in prompts}
        scores = numeric_answer([None] * len(rows), [r["completion"] for r in rows],
                                answer=[by_id[r["prompt_id"]]["answer"] for r in rows])  # fmt: skip
        return sum(s == 1.0 for s in scores) / len(rows)

    seconds: dict[tuple[str, str], list[float]] = {}
    accuracy: dict[tuple[str, str], float] = {}
    handover: dict[str, float] = {}
    for _ in range(cli.repeats):
        for name, r, checkpoint, model in policies:

            @contextlib.contextmanager
            def live(model=model):
                yield model

            weights = PolicyWeights(r, checkpoint, live, lora=bool(model_args.use_peft))
            for side, generator in (("in-process (before)", local), ("vLLM (after)", engine)):
                started = time.perf_counter()
                with generator.open(weights, greedy):
                    opened = time.perf_counter() - started
                    begin = time.perf_counter()
                    rows = generator.generate(prompts, ids, 1, greedy)
                    seconds.setdefault((name, side), []).append(time.perf_counter() - begin)
                accuracy[name, side] = right(rows)
                if generator is engine and name not in handover:
                    handover[name] = opened  # the engine's start (base), the adapter's hand-over (round 0's)
    rows = []
    for name, _, _, _ in policies:
        before = statistics.median(seconds[name, "in-process (before)"])
        after = statistics.median(seconds[name, "vLLM (after)"])
        rows.append({"policy": name, "prompts": len(prompts), "before (s)": before, "after (s)": after,
                     "speed-up": f"{before / after:.2f}x", "engine start / hand-over (s)": handover[name],
                     "accuracy before": f"{accuracy[name, 'in-process (before)']:.1%}",
                     "accuracy after": f"{accuracy[name, 'vLLM (after)']:.1%}"})  # fmt: skip
    print(table(rows))
    print(f"median of {cli.repeats} alternating repeats; torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
