"""The trained policy as one model folder that `transformers` and `vllm serve` load as they are: a finished round's
checkpoint (the last by default), its LoRA adapter merged into the base model, with the tokenizer and a model card
(`README.md`: the base model, the recipe, and every round's numbers). `push_to_hub` uploads that folder.

    rs-trainer export model --output_dir outputs/run --out outputs/run-merged [--round 1] [--push_to_hub org/name]

A recipe with `push_to_hub: true` does the same at the end of the run, into `output_dir/merged` (TRL's
`push_to_hub` and `hub_model_id`).
"""

from __future__ import annotations

import json
from pathlib import Path

from rs_trainer.errors import ConfigError
from rs_trainer.run.io import atomic_dir, write_atomic
from rs_trainer.run.layout import TRAIN_METRICS, RunLayout

CARD_METRICS = ("eval/accuracy", "rs/pass@1", "rs/pass@n", "rs/num_selected", "train/loss")


def finished_round(files: RunLayout, r: int | None) -> int:
    """Round `r`, or the last finished round, checked to hold a checkpoint."""
    finished = [k for k in files.rounds() if files.metrics(k).is_file()]
    if not finished:
        raise ConfigError(f"{files.root} holds no finished round (round_<r>/metrics.json); name a run's output_dir.")
    r = finished[-1] if r is None else r
    if r not in finished:
        raise ConfigError(f"`--round` {r} is not a finished round of {files.root}; finished: {finished}.")
    if (
        not (files.checkpoint(r) / "config.json").is_file()
        and not (files.checkpoint(r) / "adapter_config.json").is_file()
    ):
        raise ConfigError(f"{files.checkpoint(r)} holds no model (the run had `save_checkpoints: false`?).")
    return r


def export_model(output_dir: str | Path, out: str | Path, r: int | None = None) -> Path:
    """Write round `r`'s policy (default: the last finished round) to `out` as a plain `transformers` model folder,
    in the run's dtype, with a model card; return `out`. The folder is swapped in whole (`atomic_dir`)."""
    import torch
    from transformers import AutoTokenizer

    from rs_trainer.run.models import merged_policy

    files = RunLayout(Path(output_dir))
    r = finished_round(files, r)
    checkpoint = files.checkpoint(r)
    config = json.loads(files.run_config.read_text()) if files.run_config.is_file() else {}
    dtype = (config.get("model") or {}).get("dtype") or "auto"
    dtype = getattr(torch, dtype) if dtype not in ("auto", None) else "auto"
    model = merged_policy(checkpoint, dtype)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / TRAIN_METRICS).unlink(missing_ok=True)
        write_atomic(tmp / "README.md", model_card(files, r, config))
    return Path(out)


def model_card(files: RunLayout, r: int, config: dict) -> str:
    """The card: Hub metadata, what the folder is, the per-round numbers and the recipe that made it."""
    import yaml

    model = config.get("model") or {}
    base = model.get("model_name_or_path") or "unknown"
    rows = []
    base_eval = json.loads(files.base_eval.read_text()) if files.base_eval.is_file() else {}
    if base_eval:
        rows.append(["base", *(base_eval.get(k) for k in CARD_METRICS)])
    for k in range(r + 1):
        if files.metrics(k).is_file():
            metrics = json.loads(files.metrics(k).read_text())
            rows.append([str(k), *(metrics.get(m) for m in CARD_METRICS)])

    def cell(v) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lora = "its LoRA adapter merged into the base model" if model.get("use_peft") else "fully fine-tuned"
    hub_base = base if not base.startswith(("embedded:", "/", ".")) else None
    front = {"library_name": "transformers", "tags": ["rs_trainer", "rejection-sampling", "trl"]}
    if hub_base:
        front["base_model"] = hub_base
    recipe = {"rs": config.get("rs", {}), "model": model}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {files.root.name}, round {r}",
        "",
        f"The policy after round {r} of an rs_trainer run (rejection-sampling fine-tuning) from `{base}`, {lora}. "
        "It loads with `transformers.AutoModelForCausalLM.from_pretrained` and `vllm serve`.",
        "",
        "## Rounds",
        "",
        "| round | " + " | ".join(CARD_METRICS) + " |",
        "|" + "---|" * (len(CARD_METRICS) + 1),
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
        "",
        "`eval/accuracy`: greedy accuracy on the held-out set; `rs/pass@1` and `rs/pass@n`: the round's samples.",
        "",
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None).strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload `folder` to the Hub model repository `repo_id` (created when missing); return its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    return f"https://huggingface.co/{repo_id}"
