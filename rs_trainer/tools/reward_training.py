"""Train a reward model offline with `trl.RewardTrainer`, on preference pairs cut from this project's own runs.

    rs-trainer reward-model --config recipes/smollm2/reward_model.yaml [--key value ...]

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
from rs_trainer.run.formats import pair_row
from rs_trainer.run.io import atomic_dir, read_jsonl, write_json, write_jsonl
from rs_trainer.run.layout import RunLayout
from rs_trainer.run.models import ensure_pad_token
from rs_trainer.tools import same_form
from rs_trainer.tools.export import PAIR_RULES, dpo_pairs, load_generations

# For tokenizers without a chat template (BERT-style encoders): [CLS] role: text [SEP] ... , read at [CLS].
ENCODER_CHAT_TEMPLATE = (
    "{{ cls_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ sep_token }}{% endfor %}"
)


class NoPairsError(ConfigError):
    """The runs give no pair to train on: no prompt has samples of different rewards."""


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
    rank_by: str = field(
        default="reward",
        metadata={
            "help": "The reward that ranks a prompt's samples into pairs: `reward` (what selected in those runs) or "
            "`verified_reward` (the verifier's verdict kept beside a reward model's score: its labels)."
        },
    )
    pairs_per_round: int | None = field(
        default=None,
        metadata={
            "help": "A budget of labels: at most this many pairs from each round (a seeded draw), as Llama 2 bought "
            "a batch of human comparisons per round; default every pair. Same-form pairs come on top."
        },
    )
    pairs_from: list[str] = field(
        default_factory=list,
        metadata={"help": "Reward-model output_dirs whose pairs_train.jsonl also trains this one: earlier labels."},
    )
    same_form_pairs: int = field(
        default=0,
        metadata={
            "help": "Per right completion (one that ties the best of its prompt and beats another), this many more "
            "pairs against copies of it whose last integer is off by +1, -1, +2, ...: a right and a wrong answer "
            "of the same form, so the model must read the number. For numeric answers; 0 (default) makes none."
        },
    )
    margin_scale: float | None = field(
        default=None,
        metadata={
            "help": "Llama 2's margin: each pair's margin m in the loss -log σ(r_chosen - r_rejected - m) is this "
            "times the pair's reward gap (TRL's `margin` column); default none, the plain Bradley-Terry loss."
        },
    )
    same_form_questions: int = field(
        default=0,
        metadata={
            "help": "Measure same-form accuracy (`tools.same_form`) on this many unseen arithmetic questions per "
            "split of `same_form_splits`, before and after training; needs runs of `builtin:arithmetic`. 0: off."
        },
    )
    same_form_splits: list[str] = field(
        default_factory=lambda: list(same_form.SPLITS),
        metadata={"help": f"The splits of `same_form_questions`: some of {list(same_form.SPLITS)}."},
    )


def parse_args(argv: list[str] | None = None):
    """The reward-model recipe: `RewardDataArguments`, `trl.RewardConfig` and `trl.ModelConfig`."""
    from trl import ModelConfig, RewardConfig, TrlParser

    parser = TrlParser((RewardDataArguments, RewardConfig, ModelConfig))
    try:
        data_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    except ValueError as err:
        hint = ""
        if "Unknown arguments" in str(err) or "not used" in str(err):
            hint = "\nEvery key must be a field of RewardDataArguments, trl.RewardConfig or trl.ModelConfig."
        raise ConfigError(f"{err}{hint}") from None
    if data_args.pair_rule not in PAIR_RULES:
        raise ConfigError(f"`pair_rule` {data_args.pair_rule!r} is unknown; choose one of {PAIR_RULES}.")
    if model_args.model_name_or_path is None:
        raise ConfigError("`model_name_or_path` is not set; name a hub id, a local folder or `embedded:<name>`.")
    return data_args, training_args, model_args


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
    """Preference pairs from the runs in `generations_from`, pooled over rounds per prompt_id (with a
    `pairs_per_round` budget, drawn per round instead), then the same-form pairs and the earlier ones
    (`pairs_from`)."""
    if not data_args.generations_from:
        raise ConfigError("`generations_from` is empty; name the output_dir of a finished run (`make demo`).")
    if data_args.rank_by not in ("reward", "verified_reward"):
        raise ConfigError(f"`rank_by` must be `reward` or `verified_reward`, got {data_args.rank_by!r}.")
    samples = []
    for run in data_args.generations_from:
        try:
            rows = load_generations(run, data_args.rounds)
        except FileNotFoundError as err:
            raise ConfigError(f"`generations_from`: {err}") from None
        if data_args.rank_by == "verified_reward":
            if any("verified_reward" not in s for s in rows):
                raise ConfigError(
                    f"`rank_by: verified_reward`, but {run} kept no `verified_reward` (its recipe set no "
                    "`eval_reward_funcs` apart from `reward_funcs`); use `rank_by: reward`."
                )
            rows = [{**s, "reward": s["verified_reward"]} for s in rows]
        budget = data_args.pairs_per_round is not None  # pairs drawn round by round: keep each round apart
        samples.extend(s if budget else {**s, "round": None} for s in rows)
    # The first copy of each completion of a prompt stays: sample indices repeat across rounds, so by position.
    position = {id(s): i for i, s in enumerate(samples)}
    unique = drop_duplicates(samples, "normalised", order=lambda s: position[id(s)])
    pairs = dpo_pairs(unique, rule=data_args.pair_rule, min_margin=data_args.min_margin, seed=seed)
    if data_args.pairs_per_round is not None:
        pairs = labelled_pairs(pairs, data_args.pairs_per_round, seed)
    if data_args.same_form_pairs:
        pairs += same_form_pairs(unique, pairs, data_args.same_form_pairs)
    if data_args.margin_scale is not None:
        pairs = [{**p, "margin": data_args.margin_scale * p["margin"]} for p in pairs]
    for earlier in data_args.pairs_from:  # as they trained the earlier model, margins included
        found = Path(earlier) / "pairs_train.jsonl"
        if not found.is_file():
            raise ConfigError(f"`pairs_from`: {found} does not exist; name a reward model's output_dir.")
        pairs += [{**p, "earlier": True} for p in read_jsonl(found)]
    return pairs


def labelled_pairs(pairs: list[dict], per_round: int, seed: int) -> list[dict]:
    """At most `per_round` pairs of each round, a seeded draw (`seeds.label_budget_rng`), in their order."""
    by_round: dict = {}
    for i, p in enumerate(pairs):
        by_round.setdefault(p["round"], []).append(i)
    kept = set()
    for r, indices in by_round.items():
        kept.update(seeds.label_budget_rng(seed, r).sample(indices, min(per_round, len(indices))))
    return [p for i, p in enumerate(pairs) if i in kept]


def same_form_pairs(samples: list[dict], pairs: list[dict], count: int) -> list[dict]:
    """For each sample that ties the chosen side of a pair of its prompt (a right answer, under a verifier), `count`
    pairs against copies of it whose last integer is off by +1, -1, +2, ... (`same_form.offsets`), marked
    `same_form: true`, with the margin of the prompt's widest pair. Samples without an integer give none.

    Example: "7 + 5 = 12" (reward 1) beside "13" (reward 0), count 2 -> ("7 + 5 = 12", "7 + 5 = 13") and
    ("7 + 5 = 12", "7 + 5 = 11"), each with margin 1.0.
    """
    best: dict[str, tuple[float, float]] = {}  # prompt_id -> (chosen reward, widest margin)
    for p in pairs:
        reward, margin = best.get(p["prompt_id"], (p["chosen_reward"], 0.0))
        best[p["prompt_id"]] = (reward, max(margin, p["margin"]))
    out = []
    for s in samples:
        if s["prompt_id"] not in best or s["reward"] != best[s["prompt_id"]][0]:
            continue
        for offset in same_form.offsets(count):
            wrong = same_form.perturbed(s["completion"], offset)
            if wrong is not None:
                copy = {**s, "completion": wrong, "reward": None, "sample_index": -1}
                out.append({**pair_row(s, copy, best[s["prompt_id"]][1]), "same_form": True})
    return out


def pairwise_accuracy(scorer, pairs: list[dict]) -> float | None:
    """Fraction of pairs whose chosen completion the scorer rates strictly above the rejected one."""
    if not pairs:
        return None
    prompts = [p["prompt"] for p in pairs]
    chosen = scorer(prompts + prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    return sum(c > r for c, r in zip(chosen[: len(pairs)], chosen[len(pairs) :], strict=True)) / len(pairs)


def prepare_start_model(model_path: str, folder: Path, seed: int) -> Path:
    """The starting checkpoint as a one-output sequence classifier with a chat template, saved to `folder`: the
    untrained baseline is then scored exactly as the trained model will be. A LoRA policy checkpoint (a round's
    `checkpoint/`) is merged into its base model first, so the reward model starts from the policy it will judge."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged = None
    if (Path(model_path) / "adapter_config.json").is_file():
        from rs_trainer.run.models import merged_policy

        merged = folder.with_name(folder.name + ".merged")
        policy = merged_policy(model_path, torch.float32)
        policy.save_pretrained(merged)
        AutoTokenizer.from_pretrained(model_path).save_pretrained(merged)
        del policy
        model_path = str(merged)
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
    if merged is not None:
        shutil.rmtree(merged, ignore_errors=True)
    return folder


def same_form_questions(data_args: RewardDataArguments) -> dict[str, list[dict]]:
    """The unseen arithmetic questions of each `same_form_splits` split, drawn around the training questions of
    the first run in `generations_from` (its `run_config.json` names the task and its keys)."""
    import json

    from rs_trainer.tasks.arithmetic import draw_pairs

    if not data_args.same_form_questions:
        return {}
    unknown = sorted(set(data_args.same_form_splits) - set(same_form.SPLITS))
    if unknown:
        raise ConfigError(f"`same_form_splits` {unknown} unknown; choose among {list(same_form.SPLITS)}.")
    config = RunLayout(data_args.generations_from[0]).run_config
    rs = json.loads(config.read_text())["rs"] if config.is_file() else {}
    if rs.get("dataset_name") != "builtin:arithmetic":
        raise ConfigError(
            f"`same_form_questions` measures on arithmetic questions, but {config} is not a run of "
            "`builtin:arithmetic`; set `same_form_questions: 0`."
        )
    lo, hi, seed = rs["task_min_operand"], rs["task_max_operand"], rs["seed"]
    trained = set(draw_pairs(rs["task_num_train"], rs["task_num_eval"], lo, hi, seed)[: rs["task_num_train"]])
    try:
        return {
            split: same_form.questions(split, data_args.same_form_questions, lo, hi, trained, seed)
            for split in data_args.same_form_splits
        }
    except ValueError as err:
        raise ConfigError(f"`same_form_questions`: {err}.") from None


def reward_model_accuracies(model: str | Path, eval_pairs: list[dict], questions: dict, suffix: str = "") -> dict:
    """Held-out pairwise accuracy on the run's own pairs and on the same-form ones among them, and same-form
    accuracy on each split's unseen `questions`, all through `RewardModelScorer`."""
    from rs_trainer.rewards.reward_model import RewardModelScorer

    scorer = RewardModelScorer(str(model))
    own = [p for p in eval_pairs if not p.get("same_form")]
    made = [p for p in eval_pairs if p.get("same_form")]
    out = {f"eval/pairwise_accuracy{suffix}": pairwise_accuracy(scorer, own)}
    if made:
        out[f"eval/same_form_pairwise_accuracy{suffix}"] = pairwise_accuracy(scorer, made)
    for split, rows in questions.items():
        out[f"eval/same_form/{split}{suffix}"] = same_form.same_form_accuracy(scorer, rows)
    return out


def train_reward_model(data_args: RewardDataArguments, training_args, model_args) -> dict:
    """Build pairs, train with `trl.RewardTrainer` (LoRA when `use_peft`, merged into the saved model), save
    `model/` atomically and return the metrics."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardTrainer, get_peft_config

    from rs_trainer.run.models import resolve_model_path

    if not 0 <= data_args.eval_fraction < 1:
        raise ConfigError(f"`eval_fraction` must be in [0, 1), got {data_args.eval_fraction}.")
    if data_args.same_form_pairs < 0 or data_args.same_form_questions < 0:
        raise ConfigError("`same_form_pairs` and `same_form_questions` must be >= 0 (0 turns each off).")
    out = Path(training_args.output_dir)
    pairs = build_pairs(data_args, training_args.seed)
    questions = same_form_questions(data_args)
    earlier = [p for p in pairs if p.get("earlier")]  # already split by the reward model that trained on them
    train_pairs, eval_pairs = split_by_prompt(
        [p for p in pairs if not p.get("earlier")], data_args.eval_fraction, training_args.seed
    )
    train_pairs += earlier
    if not train_pairs:
        raise NoPairsError(
            f"The runs in `generations_from` give {len(pairs)} pair(s) to train on; a prompt gives a pair only when "
            "its samples differ in reward. Take more rounds or samples, or lower `min_margin`."
        )
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "pairs_train.jsonl", train_pairs)
    write_jsonl(out / "pairs_eval.jsonl", eval_pairs)

    start = prepare_start_model(resolve_model_path(model_args.model_name_or_path), out / "start", training_args.seed)
    before = reward_model_accuracies(start, eval_pairs, questions, suffix="_before")

    columns = ("prompt", "chosen", "rejected", *(("margin",) if data_args.margin_scale is not None else ()))

    def as_dataset(rows):
        return Dataset.from_list([{k: r[k] for k in columns} for r in rows])

    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        peft_config.task_type = "SEQ_CLS"  # PEFT then trains and saves the new score head whole
    t0 = time.perf_counter()
    trainer = RewardTrainer(
        model=str(start),
        args=training_args,
        train_dataset=as_dataset(train_pairs),
        eval_dataset=as_dataset(eval_pairs) if eval_pairs else None,
        processing_class=AutoTokenizer.from_pretrained(start),
        peft_config=peft_config,
    )
    result = trainer.train()
    seconds = time.perf_counter() - t0

    final = out / "model"
    model = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)
    shutil.rmtree(start, ignore_errors=True)

    metrics = {
        "model_name_or_path": model_args.model_name_or_path,
        "generations_from": data_args.generations_from,
        "use_peft": bool(model_args.use_peft),
        "same_form_pairs": data_args.same_form_pairs,
        "margin_scale": data_args.margin_scale,
        "num_pairs": len(pairs),
        "num_same_form_pairs": sum(bool(p.get("same_form")) for p in pairs),
        "num_train_pairs": len(train_pairs),
        "num_eval_pairs": len(eval_pairs),
        "num_train_prompts": len({p["prompt_id"] for p in train_pairs}),
        "num_eval_prompts": len({p["prompt_id"] for p in eval_pairs}),
        **before,
        **reward_model_accuracies(final, eval_pairs, questions),
        "train/loss": result.training_loss,
        "train/steps": result.global_step,
        "timing/train": seconds,
    }
    write_json(out / "reward_model_metrics.json", metrics)
    return metrics
