"""Resuming a run in the same `output_dir`: what is finished on disk, and loading it back.

A round's phases leave these marks, each written atomically or appended durably:
- `round_<r>/shards/generations.rank<k>.jsonl`: generated rows appended per batch as they finish;
- `round_<r>/sft.jsonl`, then `round_<r>/generations.jsonl`: every row scored and marked `selected` (generation,
  scoring and selection done);
- `round_<r>/checkpoint/`, swapped in whole with the round's SFT statistics inside (`TRAIN_METRICS`): SFT done;
- `round_<r>/metrics.json`, written after `samples.md` and `report.png`: the round finished.
A rerun skips finished rounds, loads the last finished round's model or adapter, reuses the scored rows of a
round killed after selection and the checkpoint of a round killed after its save, and generates only the prompts
whose rows are not yet on disk. Each round's SFT starts a fresh optimizer and schedule, and every random draw is
seeded from (seed, round, ...), so a resumed run follows the same path as one that was never interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path

from rs_trainer.run.io import read_jsonl, read_jsonl_prefix
from rs_trainer.run.layout import TRAIN_METRICS, RunLayout

__all__ = ["TRAIN_METRICS", "finished_rounds", "generated_rows", "load_weights", "scored_rows", "trained_round"]


def finished_rounds(files: RunLayout) -> list[dict]:
    """Metrics of rounds 0, 1, ... that finished, stopping at the first that did not."""
    history = []
    while files.metrics(len(history)).exists():
        history.append(json.loads(files.metrics(len(history)).read_text()))
    return history


def scored_rows(files: RunLayout, r: int) -> list[dict] | None:
    """The round's scored and selected rows, if that phase finished."""
    path = files.generations(r)
    return read_jsonl(path) if path.exists() else None


def trained_round(files: RunLayout, r: int) -> dict | None:
    """The SFT statistics saved with a round's checkpoint, if that round's training finished and was saved."""
    path = files.checkpoint(r) / TRAIN_METRICS
    return json.loads(path.read_text()) if path.exists() else None


def generated_rows(files: RunLayout, r: int, sample_ranges: dict[str, range]) -> dict[str, dict[str, list[dict]]]:
    """Rows already generated in round `r` by any rank, as {generator: {prompt_id: rows}}, keeping only the
    prompts for which that generator has every one of its sample indices (`sample_ranges[generator]`)."""
    by_key: dict[tuple[str, str], dict[int, dict]] = {}
    for path in sorted(files.shards(r).glob("generations.rank*.jsonl")):
        for row in read_jsonl_prefix(path):
            key = (row.get("generator", "policy"), row["prompt_id"])
            by_key.setdefault(key, {})[row["sample_index"]] = row
    done: dict[str, dict[str, list[dict]]] = {name: {} for name in sample_ranges}
    for (name, pid), rows in by_key.items():
        if name in sample_ranges and all(i in rows for i in sample_ranges[name]):
            done[name][pid] = [rows[i] for i in sample_ranges[name]]
    return done


def load_weights(model, checkpoint: Path, sharding) -> None:
    """Load a round's saved adapter (LoRA) or full weights into `model` (unwrapped, possibly a PeftModel), laid out
    as `sharding` (`rs_trainer.run.sharding.Sharding`) says."""
    from safetensors.torch import load_file

    if (checkpoint / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        from rs_trainer.run.deepspeed import gathered_for_loading

        with gathered_for_loading(model):  # ZeRO-3 partitions gathered (a no-op otherwise)
            result = set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"{checkpoint}: adapter keys do not match the model: {result.unexpected_keys[:3]}")
        return
    state = load_file(checkpoint / "model.safetensors")
    missing, unexpected = sharding.load_full_state(model, state)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(
            f"{checkpoint} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
