"""Supervised fine-tuning on selected (prompt, completion) pairs, with the loss on completion tokens only.

An example is the prompt rendered exactly as it was for generation, followed by the completion's tokens and the
end token (when the completion ended on its own), so the model is trained on the very sequence it sampled.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE = -100


def build_example(prompt_ids: list[int], completion_ids: list[int], max_len: int) -> dict | None:
    """`input_ids` and `labels` (prompt masked with -100); None when the prompt alone fills `max_len`."""
    if len(prompt_ids) >= max_len:
        return None
    ids = (prompt_ids + completion_ids)[:max_len]
    labels = [IGNORE] * len(prompt_ids) + ids[len(prompt_ids) :]
    return {"input_ids": ids, "labels": labels}


def tokenize_completion(tokenizer, text: str, finished: bool, eos_id: int) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [eos_id] if finished else ids


def collate(examples: list[dict], pad_id: int, device) -> dict:
    """Right-padded batch; `weight` is 0 for filler examples that only keep ranks in step."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    weight = torch.tensor([e.get("weight", 1.0) for e in examples])
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
        "weight": weight,
    }


def completion_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over completion tokens (labels != -100); returns (loss, token count).

    Logits are computed only from the first position that predicts a completion token onwards
    (`logits_to_keep`): the prompt positions need no vocabulary projection, which is a large share of a small
    model's compute and of its activation memory.
    """
    labels = batch["labels"]
    has_label = (labels[:, 1:] != IGNORE).any(dim=0)
    start = int(has_label.nonzero()[0]) if has_label.any() else labels.size(1) - 2
    keep = torch.arange(start, labels.size(1) - 1, device=labels.device)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
    ).logits.float()
    targets = labels[:, start + 1 :]
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view_as(targets)
    token_weight = (targets != IGNORE).float() * batch["weight"].to(per_token.device)[:, None]
    count = int((targets != IGNORE).sum())
    if token_weight.sum() == 0:
        return per_token.sum() * 0.0, count  # keeps the graph (and DDP's all-reduce) alive on a filler batch
    return (per_token * token_weight).sum() / token_weight.sum(), count


def plan_batches(
    examples: list[dict], epochs: int, batch_size: int, rank: int, world_size: int, seed: int
) -> list[list[dict]]:
    """This rank's micro-batches for all epochs. Every rank gets the same number of batches: a rank that runs out
    trains on weight-0 fillers, so no rank waits on another's all-reduce forever (even with nothing selected
    on it)."""
    per_rank_batches = math.ceil(len(examples) / (batch_size * world_size))
    batches = []
    for epoch in range(epochs):
        order = list(range(len(examples)))
        random.Random(f"sft:{seed}:{epoch}").shuffle(order)
        mine = [examples[i] for i in order[rank::world_size]]
        for b in range(per_rank_batches):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            if not chunk:
                chunk = [{**examples[0], "weight": 0.0}]
            batches.append(chunk)
    return batches


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable parameters (the adapter with LoRA, everything without)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def restore_trainable(model, state: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        if n in state:
            p.copy_(state[n].to(p.device))


def train_steps(
    accelerator,
    model,
    optimizer,
    scheduler,
    steps: list[list[list[dict]]],
    pad_id: int,
    max_grad_norm: float = 1.0,
    on_step: Callable[[float], None] | None = None,
) -> tuple[list[float], int]:
    """Run optimizer steps; each step is a list of micro-batches (gradient accumulation). Gradients are synced
    across ranks only on a step's last micro-batch. Returns (loss of each step, completion tokens trained on)."""
    model.train()
    losses, tokens = [], 0
    for group in steps:
        step_loss = 0.0
        for j, micro in enumerate(group):
            batch = collate(micro, pad_id, accelerator.device)
            sync = contextlib.nullcontext() if j == len(group) - 1 else accelerator.no_sync(model)
            with sync:
                loss, count = completion_loss(model, batch)
                accelerator.backward(loss / len(group))
            step_loss += loss.item() / len(group)
            tokens += count
        if max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(step_loss)
        if on_step:
            on_step(step_loss)
    model.eval()
    return losses, tokens
