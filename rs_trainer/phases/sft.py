"""Supervised fine-tuning on selected (prompt, completion) pairs, with the loss on completion tokens only.

An example is the prompt rendered exactly as it was for generation, followed by the completion's tokens and the
end token (when the completion ended on its own), so the model is trained on the very sequence it sampled.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from rs_trainer.run import seeds

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


def count_targets(example: dict) -> int:
    """Completion tokens the loss is taken over: labels after the first position (which nothing predicts), zero
    for a weight-0 filler."""
    if example.get("weight", 1.0) == 0:
        return 0
    return sum(1 for t in example["labels"][1:] if t != IGNORE)


def completion_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """`(logits, targets)` of a collated batch (`collate`): the float logits from the first position that predicts a
    completion token onwards, and the labels they predict (-100 where there is none), aligned position by position.

    Only those positions get logits (`logits_to_keep`): the prompt positions need no vocabulary projection, which is
    a large share of a small model's compute and of its activation memory.
    """
    labels = batch["labels"]
    has_label = (labels[:, 1:] != IGNORE).any(dim=0)
    start = int(has_label.nonzero()[0]) if has_label.any() else labels.size(1) - 2
    keep = torch.arange(start, labels.size(1) - 1, device=labels.device)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
    ).logits.float()
    return logits, labels[:, start + 1 :]


def completion_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over completion tokens (labels != -100), weighted per example; returns
    (loss sum, weighted token count). The caller divides by the tokens of the whole optimizer step. Logits are
    computed for the completion positions only (`completion_logits`).
    """
    logits, targets = completion_logits(model, batch)
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view_as(targets)
    token_weight = (targets != IGNORE).float() * batch["weight"].to(per_token.device)[:, None]
    # A filler batch (weight 0) still returns a loss on the graph, so DDP's all-reduce runs on every rank.
    return (per_token * token_weight).sum(), int(token_weight.sum())


def plan_steps(
    examples: list[dict], epochs: int, batch_size: int, grad_accum: int, rank: int, world_size: int, seed: int
) -> list[list[list[dict]]]:
    """This rank's optimizer steps for all epochs, each a list of micro-batches.

    Each epoch's seeded order is cut into steps of `batch_size * grad_accum * world_size` examples (the last one
    may be shorter), and a step's examples are dealt to the ranks in turn. So which examples share a step depends
    only on the effective batch, never on how it is split into micro-batches and processes. Every rank gets the
    same number of steps and of micro-batches per step: a rank that runs out trains on weight-0 fillers, so no
    rank waits on another's all-reduce forever (even with nothing selected on it).

    Example: 9 examples, batch 2, accumulation 2, 2 ranks: steps of 8 and 1 examples; in the first step each rank
    has two micro-batches of 2, in the second rank 0 trains on the last example and rank 1 on a weight-0 filler.
    """
    per_step = batch_size * grad_accum * world_size
    steps = []
    for epoch in range(epochs):
        order = list(range(len(examples)))
        seeds.sft_order_rng(seed, epoch).shuffle(order)
        for start in range(0, len(order), per_step):
            chunk = order[start : start + per_step]
            mine = [examples[i] for i in chunk[rank::world_size]]
            micro_count = math.ceil(math.ceil(len(chunk) / world_size) / batch_size)
            micro = [mine[m * batch_size : (m + 1) * batch_size] for m in range(micro_count)]
            steps.append([m or [{**examples[0], "weight": 0.0}] for m in micro])
    return steps


def reset_optimizer(optimizer) -> None:
    """Forget the optimizer's moments and step counts: each round is a fresh fine-tuning run.

    `state` is the attribute Accelerate's optimizer wrapper forwards for every backend: a torch optimizer (also
    under DDP and FSDP) and DeepSpeed's ZeRO optimizers, whose `state` is their inner optimizer's. Each of them
    builds its state again lazily at the next step."""
    optimizer.state.clear()


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
    """Run optimizer steps; each step is a list of micro-batches (gradient accumulation). Returns (loss of each
    step, completion tokens trained on by this rank).

    The loss of a step is the sum of per-token losses over all its micro-batches on all ranks, divided by the
    completion tokens of the whole step, counted across ranks before any backward pass (as transformers' Trainer
    does with `num_items_in_batch`). So every token weighs the same whatever the micro-batch size, accumulation
    and number of processes; only the effective batch matters. DDP and FSDP average gradients over the ranks,
    so each rank's share is scaled by the number of processes. Gradients are synced only on a step's last
    micro-batch."""
    model.train()
    world = accelerator.num_processes
    losses, tokens = [], 0
    for group in steps:
        local = sum(count_targets(e) for micro in group for e in micro)
        step_tokens = int(accelerator.reduce(torch.tensor(local, device=accelerator.device), reduction="sum"))
        loss_sum = torch.zeros((), device=accelerator.device)
        for j, micro in enumerate(group):
            batch = collate(micro, pad_id, accelerator.device)
            sync = contextlib.nullcontext() if j == len(group) - 1 else accelerator.no_sync(model)
            with sync:
                loss, count = completion_loss(model, batch)
                accelerator.backward(loss * world / max(step_tokens, 1))
            loss_sum += loss.detach()
            tokens += count
        if max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step_loss = float(accelerator.reduce(loss_sum, reduction="sum")) / max(step_tokens, 1)
        losses.append(step_loss)
        if on_step:
            on_step(step_loss)
    model.eval()
    return losses, tokens
