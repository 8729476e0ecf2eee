"""Load prompts, give each a stable `prompt_id`, draw a round's prompts and shard them across ranks.

A prompt is a dict: `prompt_id` (str), `prompt` (list of chat messages) and any other dataset columns (ground
truths such as `answer`), which are passed on to the scorers. Nothing is ever keyed by prompt text.
"""

from __future__ import annotations

import json
from pathlib import Path

from rs_trainer.errors import ConfigError, first_line
from rs_trainer.run import seeds

BUILTIN_PREFIX = "builtin:"
# Local dataset files by extension -> the `datasets` builder that reads them.
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def is_local_file(name: str) -> bool:
    """A dataset given as one file (see `LOCAL_FORMATS`), which holds a single split."""
    return any(name.endswith(ext) for ext in LOCAL_FORMATS)


def _check_jsonl(path: Path) -> None:
    """datasets' own error for a broken line names no line; find it first and name it."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"{path}: line {number} is not valid JSON ({err.msg}); fix or remove that line."
                ) from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}: line {number} is not a JSON object; each line must be one row.")


def _load_rows(name: str, split: str, key: str, split_key: str, config: str | None = None) -> list[dict]:
    path = Path(name)
    if path.is_file() and path.suffix not in LOCAL_FORMATS:
        raise ConfigError(
            f"`{key}` {name}: {path.suffix or 'no'} extension; a local file is one of {sorted(LOCAL_FORMATS)}."
        )
    if path.suffix in LOCAL_FORMATS:
        if not path.exists():
            raise ConfigError(f"`{key}` {name} does not exist.")
        if path.suffix == ".jsonl":
            _check_jsonl(path)
        if path.stat().st_size == 0:
            raise ConfigError(f"`{key}` {name} is empty; it needs one row per prompt.")
        from datasets import load_dataset

        return load_dataset(LOCAL_FORMATS[path.suffix], data_files={split: str(path)}, split=split).to_list()
    from datasets import load_dataset

    try:
        return load_dataset(name, config, split=split).to_list()
    except ValueError as err:
        if "Unknown split" not in str(err):
            raise
        reason = first_line(err)
        raise ConfigError(f"`{split_key}` {split!r} is not a split of {name} ({reason}); name one that is.") from None
    except (OSError, ConnectionError) as err:  # not on the Hub, or offline and not cached
        reason = first_line(err)
        raise ConfigError(
            f"`{key}` {name} could not be loaded ({reason}); name a local file ({', '.join(LOCAL_FORMATS)}), a "
            "local dataset folder, or a hub dataset available offline."
        ) from None


def normalise(rows: list[dict], prompt_column: str, id_column: str | None, split: str, source: str) -> list[dict]:
    """Check the rows and return prompts with `prompt_id` and chat-message `prompt`.

    A string prompt becomes one user message. Ids come from `id_column` when present, else `<split>-<row>`.
    """
    if rows and prompt_column not in rows[0]:
        raise ConfigError(
            f"{source}: no prompt column `{prompt_column}` (columns: {sorted(rows[0])}); set `prompt_column`."
        )
    prompts, seen = [], set()
    for i, row in enumerate(rows):
        pid = str(row[id_column]) if id_column and row.get(id_column) is not None else f"{split}-{i:06d}"
        if pid in seen:
            raise ConfigError(f"{source}: prompt_id {pid!r} appears twice (row {i}); ids must be unique.")
        seen.add(pid)
        value = row.get(prompt_column)
        messages = [{"role": "user", "content": value}] if isinstance(value, str) else value
        if (
            not messages
            or not isinstance(messages, list)
            or not any(str(m.get("content", "")).strip() for m in messages)
        ):
            raise ConfigError(f"{source}: prompt {pid!r} (row {i}) is empty; remove it or fill `{prompt_column}`.")
        extra = {k: v for k, v in row.items() if k not in (prompt_column, id_column, "prompt_id")}
        prompts.append({**extra, "prompt_id": pid, "prompt": messages})
    if not prompts:
        raise ConfigError(f"{source}: no prompts found; the dataset has no rows.")
    return prompts


def builtin_task(name: str | None):
    """The task module of `rs_trainer.tasks` that `name` (`builtin:<task>`) picks; None for any other dataset."""
    if not name or not name.startswith(BUILTIN_PREFIX):
        return None
    from rs_trainer.tasks import TASKS

    task = TASKS.get(name[len(BUILTIN_PREFIX) :])
    if task is None:
        known = ", ".join(BUILTIN_PREFIX + t for t in TASKS)
        raise ConfigError(f"Unknown built-in dataset {name!r}; the built-ins are: {known}.")
    return task


def load_prompts(args, split: str, name: str | None = None, eval: bool = False) -> list[dict]:
    """The prompts of `split` from `name` (default `args.dataset_name`); `eval` names the eval keys in errors."""
    name = name or args.dataset_name
    key = "eval_dataset_name" if eval and args.eval_dataset_name else "dataset_name"
    split_key = "dataset_test_split" if eval else "dataset_train_split"
    task = builtin_task(name)
    if task is not None:
        if split not in task.SPLITS:
            raise ConfigError(f"`{split_key}` {split!r}: {name} has splits {sorted(task.SPLITS)}.")
        rows = task.split(args, split)
    else:
        config = args.dataset_config if name == args.dataset_name else None
        rows = _load_rows(name, split, key, split_key, config)
    return normalise(rows, args.prompt_column, args.id_column, split, f"{name} [{split}]")


def draw_round_prompts(prompts: list[dict], per_round: int | None, seed: int, round_index: int) -> list[dict]:
    """All prompts, or `per_round` of them drawn with a seed derived from (seed, round)."""
    if per_round is None or per_round >= len(prompts):
        return list(prompts)
    rng = seeds.prompt_draw_rng(seed, round_index)
    return [prompts[i] for i in sorted(rng.sample(range(len(prompts)), per_round))]


def shard(items: list, rank: int, world_size: int) -> list:
    """Strided shard: every item lands on exactly one rank, whatever `len(items) % world_size`."""
    return items[rank::world_size]
