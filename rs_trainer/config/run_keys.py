"""The recipe keys of a run and its data (`RunKeys`, `DataKeys`), each field's facts in its metadata
(`rs_trainer.config.checks.key`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rs_trainer.config.checks import Range, key


@dataclass
class RunKeys:
    """Run: where the outputs go, the seed and the rounds."""

    output_dir: str = field(default="outputs/rs", metadata=key("Folder for every round's outputs.", semantic=False))
    overwrite_output_dir: bool = field(
        default=False,
        metadata=key(
            "Allow reusing an `output_dir` that holds a run with a different config (it is cleared).", semantic=False
        ),
    )
    seed: int = field(
        default=42, metadata=key("Seed from which every sampling and tie-break seed is derived.", range=Range())
    )
    num_rounds: int = field(
        default=2,
        metadata=key("Rejection-sampling rounds (generate, score, select, SFT).", range=Range(1), resumable=True),
    )
    dry_run: bool = field(
        default=False, metadata=key("Print the resolved plan and exit without loading a model.", semantic=False)
    )


@dataclass
class DataKeys:
    """Data: the prompts, the built-in task and the evaluation sets."""

    dataset_name: str = field(
        default="builtin:arithmetic",
        metadata=key(
            "Prompts: a local .jsonl/.json/.parquet/.csv file, a datasets hub id, or `builtin:arithmetic` "
            "(questions generated from `seed`)."
        ),
    )
    dataset_config: str | None = field(
        default=None,
        metadata=key(
            "Configuration of a datasets hub id (`load_dataset`'s `name`; TRL's key), for datasets with "
            "several and no default, e.g. `main` for openai/gsm8k. Applies to `dataset_name` when it is a hub id "
            "(and to its test split); a local file or `builtin:` ignores it."
        ),
    )
    dataset_train_split: str = field(default="train", metadata=key("Split of `dataset_name` to sample prompts from."))
    eval_dataset_name: str | None = field(
        default=None,
        metadata=key("Held-out prompts for greedy evaluation; default: the `dataset_test_split` of `dataset_name`."),
    )
    dataset_test_split: str | None = field(
        default="test",
        metadata=key(
            "Split for evaluation; `null` (or `none`) turns held-out evaluation off.", yaml_booleans={False: None}
        ),
    )
    prompt_column: str = field(
        default="prompt", metadata=key("Column with the prompt: a string or a list of chat messages.")
    )
    id_column: str | None = field(
        default="prompt_id",
        metadata=key("Column with a stable prompt id; if absent, ids are `<split>-<row number>`."),
    )
    prompts_per_round: int | None = field(
        default=None,
        metadata=key(
            "Prompts drawn (with the seed) each round; default: all of them.",
            range=Range(1, fix="; or leave it unset"),
        ),
    )
    max_eval_prompts: int | None = field(
        default=None, metadata=key("Cap on held-out prompts evaluated.", range=Range(1, fix="; or leave it unset"))
    )
    task_num_train: int = field(default=256, metadata=key("builtin:arithmetic: training questions.", range=Range(1)))
    task_num_eval: int = field(default=64, metadata=key("builtin:arithmetic: held-out questions.", range=Range(0)))
    task_min_operand: int = field(default=1, metadata=key("builtin:arithmetic: smallest operand.", range=Range()))
    task_max_operand: int = field(default=20, metadata=key("builtin:arithmetic: largest operand.", range=Range()))
    task_num_eval_ood: int = field(
        default=64,
        metadata=key(
            "builtin:arithmetic: questions in each out-of-distribution evaluation split of `eval_splits`. "
            "64, as `task_num_eval`: each split adds one greedy pass over this many prompts to every evaluation.",
            range=Range(1, fix="; or leave the task's out-of-distribution splits out of `eval_splits`"),
        ),
    )
    eval_splits: list[str] | None = field(
        default=None,
        metadata=key(
            "The evaluation sets, each evaluated greedily every round and for the base model: `heldout` (the "
            "`dataset_test_split` or `eval_dataset_name`; its metrics keep their names, `eval/accuracy` and "
            "`eval/reward`) and, for builtin:arithmetic only, its out-of-distribution splits, reported as "
            "`eval/<split>/accuracy` and `eval/<split>/reward` (TRL's Trainer names a dict of eval datasets the "
            "same way, `eval_<name>_<metric>`): `phrasings` (a + b asked in other words), `words` (operands in "
            "words), `stories` (word problems), `subtraction` and `three_terms` (other skills than the one "
            "trained). Default: `heldout` plus, for builtin:arithmetic, phrasings, words and stories, the "
            "two-term additions the training task teaches, so a recipe that fits the training phrasing without "
            "learning to add shows it; none when `dataset_test_split` is null (evaluation off, as before)."
        ),
    )
