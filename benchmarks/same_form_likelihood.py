"""Same-form accuracy of a generative reward model (`kind: likelihood`): on a right answer against the same text
with its number off by 1 or 2, in each of `tools.same_form.FORMS`, how often the model's log-probability of the
stated answer ranks the right one first, on arithmetic questions a run never trained on (docs/results.md).

    python benchmarks/same_form_likelihood.py --model outputs/smollm2-arithmetic-lora/round_1/checkpoint \
        [--run outputs/smollm2-arithmetic-lora] [--questions 32] [--context prompt|completion] [--answer_prefix ...]

`--run` is the run whose training questions are left out (its `run_config.json`); `--model` a causal LM or a LoRA
adapter folder. Prints one JSON line: the accuracy per split and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import time


def main():
    from rs_trainer.rewards.likelihood import LikelihoodScorer, LikelihoodSpec
    from rs_trainer.tools import same_form
    from rs_trainer.tools.reward_training import RewardDataArguments, same_form_questions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--run", default="outputs/smollm2-arithmetic-lora")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--context", choices=["prompt", "completion"], default="prompt")
    parser.add_argument("--answer_prefix", default=LikelihoodSpec.answer_prefix)
    args = parser.parse_args()
    questions = same_form_questions(
        RewardDataArguments(generations_from=[args.run], same_form_questions=args.questions)
    )
    start = time.perf_counter()
    spec = LikelihoodSpec(model=args.model, context=args.context, answer_prefix=args.answer_prefix)
    scorer = LikelihoodScorer(spec)
    accuracy = {split: round(same_form.same_form_accuracy(scorer, rows), 4) for split, rows in questions.items()}
    print(json.dumps({**vars(args), **accuracy, "seconds": round(time.perf_counter() - start)}))


if __name__ == "__main__":
    main()
