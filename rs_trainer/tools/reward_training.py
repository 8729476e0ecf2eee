"""Train a reward model offline with `trl.RewardTrainer`, on preference pairs cut from this project's own runs.

    rs-trainer reward-model --config recipes/smollm2/reward_model_minilm.yaml [--key value ...]

Llama-2-style rejection sampling needs a reward model before its first round. Here the pairs come from the scored
generations of finished runs (`generations_from`: their `output_dir`s): the samples of each prompt, pooled over
rounds and with repeated completions dropped, are paired by `rs_trainer.tools.export.dpo_pairs`. With a verifier's 0/1
reward and `pair_rule: best_vs_each_lower`, a correct completion is chosen and each incorrect one rejected.

Pairs are split by `prompt_id` (a seeded draw), so the held-out pairs come from prompts the reward model never saw.
The reward model gets a chat template when its tokenizer has none (an encoder such as MiniLM), and is trained and
later scored through that same template: `RewardTrainer` tokenizes the conversational pairs with it, and
`RewardModelScorer` renders (prompt, completion) with it.

Writes to `output_dir`:
- `model/`: the reward model with its tokenizer; a recipe scores with it as `reward_model:<output_dir>/model`;
- `pairs_train.jsonl`, `pairs_eval.jsonl`: the pairs, in TRL's conversational preference format;
- `reward_model_metrics.json`: pair counts, and the held-out pairwise accuracy (chosen scored above rejected) of
  the untrained and of the trained model, both through `RewardModelScorer`, the scorer rejection sampling uses.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rs_trainer.errors import ConfigError
from rs_trainer.phases.filters import drop_duplicates
from rs_trainer.run import seeds
from rs_trainer.run.io import atomic_dir, write_json, write_jsonl
from rs_trainer.run.models import ensure_pad_token
from rs_trainer.tools.export import PAIR_RULES, dpo_pairs, load_generations

# For tokenizers without a chat template (BERT-style encoders): [CLS] role: text [SEP] ... , read at [CLS].
ENCODER_CHAT_TEMPLATE = (
    "{{ cls_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ sep_token }}{% endfor %}"
)


@dataclass
class RewardDataArguments:
    generations_from: list[str] = field(
        default_factory=list,
        metadata={"help": "Output dirs of finished rejection-sampling runs whose scored generations give the pairs."},
    )
    rounds: list[int] | None = field(default=None, metadata={"help": "Rounds to take pairs from; default all."})
    pair_rule: str = field(
        default="best_vs_each_lower", metadata={"help": f"How samples of a prompt are paired: one of {PAIR_RULES}."}
    )
    min_margin: float = field(
        default=0.0, metadata={"help": "Smallest reward gap of a pair (a rejected sample always scores lower)."}
    )
    eval_fraction: float = field(
        default=0.2, metadata={"help": "Share of prompts (not pairs) held out to measure pairwise accuracy."}
    )


def split_by_prompt(pairs: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and held-out pairs; every pair of a prompt_id goes to the same side, drawn with `seed`.

    Example: pairs of prompts a, a, b, c, d with eval_fraction 0.25 -> one of the four prompts (with all its pairs)
    is held out, at least one when there are two prompts or more.
    """
    ids = sorted({p["prompt_id"] for p in pairs})
    seeds.reward_split_rng(seed).shuffle(ids)
    n_eval = min(len(ids) - 1, max(1, round(eval_fraction * len(ids)))) if eval_fraction > 0 else 0
    held_out = set(ids[:n_eval])
    return [p for p in pairs if p["prompt_id"] not in held_out], [p for p in pairs if p["prompt_id"] in held_out]


def build_pairs(data_args: RewardDataArguments, seed: int) -> list[dict]:
    """Preference pairs from the runs in `generations_from`, pooled over rounds per prompt_id."""
    if not data_args.generations_from:
        raise ConfigError("`generations_from` is empty; name the output_dir of a finished run (`make demo`).")
    samples = []
    for run in data_args.generations_from:
        try:
            rows = load_generations(run, data_args.rounds)
        except FileNotFoundError as err:
            raise ConfigError(f"`generations_from`: {err}") from None
        samples.extend({**s, "round": None} for s in rows)  # pool a prompt's samples over runs and rounds
    # The first copy of each completion of a prompt stays: sample indices repeat across rounds, so by position.
    position = {id(s): i for i, s in enumerate(samples)}
    unique = drop_duplicates(samples, "normalised", order=lambda s: position[id(s)])
    return dpo_pairs(unique, rule=data_args.pair_rule, min_margin=data_args.min_margin, seed=seed)


def pairwise_accuracy(scorer, pairs: list[dict]) -> float | None:
    """Fraction of pairs whose chosen completion the scorer rates strictly above the rejected one."""
    if not pairs:
        return None
    prompts = [p["prompt"] for p in pairs]
    chosen = scorer(prompts + prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    return sum(c > r for c, r in zip(chosen[: len(pairs)], chosen[len(pairs) :], strict=True)) / len(pairs)


def prepare_start_model(model_path: str, folder: Path, seed: int) -> Path:
    """The starting checkpoint as a one-output sequence classifier with a chat template, saved to `folder`: the
    untrained baseline is then scored exactly as the trained model will be."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not tokenizer.chat_template:
        if tokenizer.cls_token is None or tokenizer.sep_token is None:
            raise ConfigError(
                f"{model_path} has no chat template and no [CLS]/[SEP] tokens to build one from; give the tokenizer "
                "a chat template (RewardConfig's `chat_template_path`)."
            )
        tokenizer.chat_template = ENCODER_CHAT_TEMPLATE
    ensure_pad_token(tokenizer)
    torch.manual_seed(seed)  # the fresh head
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_reward_model(data_args: RewardDataArguments, training_args, model_args) -> dict:
    """Build pairs, train with `trl.RewardTrainer`, save `model/` atomically and return the metrics."""
    from datasets import Dataset
    from trl import RewardTrainer

    from rs_trainer.rewards.reward_model import RewardModelScorer
    from rs_trainer.run.models import resolve_model_path

    if not 0 <= data_args.eval_fraction < 1:
        raise ConfigError(f"`eval_fraction` must be in [0, 1), got {data_args.eval_fraction}.")
    out = Path(training_args.output_dir)
    pairs = build_pairs(data_args, training_args.seed)
    train_pairs, eval_pairs = split_by_prompt(pairs, data_args.eval_fraction, training_args.seed)
    if not train_pairs:
        raise ConfigError(
            f"The runs in `generations_from` give {len(pairs)} pair(s) to train on; a prompt gives a pair only when "
            "its samples differ in reward. Take more rounds or samples, or lower `min_margin`."
        )
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "pairs_train.jsonl", train_pairs)
    write_jsonl(out / "pairs_eval.jsonl", eval_pairs)

    start = prepare_start_model(resolve_model_path(model_args.model_name_or_path), out / "start", training_args.seed)
    accuracy_before = pairwise_accuracy(RewardModelScorer(str(start)), eval_pairs)

    def as_dataset(rows):
        return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])

    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    trainer = RewardTrainer(
        model=str(start),
        args=training_args,
        train_dataset=as_dataset(train_pairs),
        eval_dataset=as_dataset(eval_pairs) if eval_pairs else None,
        processing_class=AutoTokenizer.from_pretrained(start),
    )
    result = trainer.train()
    seconds = time.perf_counter() - t0

    final = out / "model"
    with atomic_dir(final) as tmp:
        trainer.save_model(str(tmp))
        trainer.processing_class.save_pretrained(tmp)
    shutil.rmtree(start, ignore_errors=True)

    metrics = {
        "model_name_or_path": model_args.model_name_or_path,
        "generations_from": data_args.generations_from,
        "num_pairs": len(pairs),
        "num_train_pairs": len(train_pairs),
        "num_eval_pairs": len(eval_pairs),
        "num_train_prompts": len({p["prompt_id"] for p in train_pairs}),
        "num_eval_prompts": len({p["prompt_id"] for p in eval_pairs}),
        "eval/pairwise_accuracy_before": accuracy_before,
        "eval/pairwise_accuracy": pairwise_accuracy(RewardModelScorer(str(final)), eval_pairs),
        "train/loss": result.training_loss,
        "train/steps": result.global_step,
        "timing/train": seconds,
    }
    write_json(out / "reward_model_metrics.json", metrics)
    return metrics
