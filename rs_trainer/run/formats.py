"""Rows in TRL's conversational dataset formats, built from a run's scored rows: what the trainer writes as
`sft.jsonl` and what the exporters (`rs_trainer.tools.export`) write for `trl.SFTTrainer` and `trl.DPOTrainer`.
Each row keeps `round`, `prompt_id` and the sample indices it came from: rows are keyed, never by text."""

from __future__ import annotations


def assistant(text: str) -> list[dict]:
    """A completion as TRL's conversational completion: one assistant message.

    >>> assistant("4")
    [{'role': 'assistant', 'content': '4'}]
    """
    return [{"role": "assistant", "content": text}]


def pair_row(chosen: dict, rejected: dict, margin: float) -> dict:
    """A preference pair in TRL's conversational format: `prompt` (messages), `chosen` and `rejected` (one
    assistant message each), with `round`, `prompt_id`, the two sample indices, their rewards and the `margin`; and
    the `model` or `generator` of each side where the rows name one."""
    row = {
        "prompt": chosen["prompt"],
        "chosen": assistant(chosen["completion"]),
        "rejected": assistant(rejected["completion"]),
        "round": chosen.get("round"),
        "prompt_id": chosen["prompt_id"],
        "chosen_sample_index": chosen["sample_index"],
        "rejected_sample_index": rejected["sample_index"],
        "chosen_reward": chosen["reward"],
        "rejected_reward": rejected["reward"],
        "margin": margin,
    }
    if "model" in chosen or "model" in rejected:
        row.update(chosen_model=chosen.get("model"), rejected_model=rejected.get("model"))
    if "generator" in chosen or "generator" in rejected:  # a pair may cross generators: teacher vs student
        row.update(chosen_generator=chosen.get("generator"), rejected_generator=rejected.get("generator"))
    return row


def sft_rows(samples: list[dict], selected_only: bool = True, drop_truncated: bool = False) -> list[dict]:
    """An SFT set in TRL's conversational prompt-completion format: `prompt` (messages) and `completion` (one
    assistant message), with `round`, `prompt_id`, `sample_index` and `reward`.

    Example: samples [(a, 0, selected), (a, 1, not selected)] -> one row, for ("a", 0); with
    `selected_only=False` -> both.
    """
    return [
        {
            "round": s.get("round"),
            "prompt_id": s["prompt_id"],
            "sample_index": s["sample_index"],
            "reward": s["reward"],
            "prompt": s["prompt"],
            "completion": assistant(s["completion"]),
        }
        for s in samples
        if (s.get("selected") or not selected_only) and (s.get("finished", True) or not drop_truncated)
    ]
