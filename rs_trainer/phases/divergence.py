"""How far the policy has moved from where it started, and how sharp it has become, from the round's own samples.

- KL(π‖π_ref) is estimated on the policy's own samples y ~ π(·|x) as the mean over samples of
  Σ_t [log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)], summed over the completion's tokens (end token included).
  With LoRA, π_ref is the same model with its adapter disabled, so no second copy is held.
- Entropy is the mean over the same completion tokens of the policy's full next-token entropy.

Both use the model's plain distribution (temperature 1), whatever temperature the samples were drawn at. The
sampler may already have the policy's side: the in-process `rs` engine returns each row's log-probability and
entropy sums from the logits it decoded with, and vLLM the sampled tokens' raw log-probabilities; then only the
reference pass runs (and entropy is unknown where the engine gave none). Pure: a model and token ids in, numbers
out; no Accelerator.
"""

from __future__ import annotations

import contextlib

import torch

from rs_trainer.phases.sft import IGNORE, collate, completion_logits


@torch.no_grad()
def completion_logprobs(model, examples: list[dict], pad_id: int, batch_size: int, entropy: bool = False):
    """Per example: the summed log-probability of its completion tokens (labels != -100) and, with `entropy`, the
    summed next-token entropy over those positions. Returns (logprob sums, entropy sums, token counts)."""
    device = next(model.parameters()).device
    logprobs, entropies, counts = [], [], []
    for start in range(0, len(examples), batch_size):
        logits, targets = completion_logits(model, collate(examples[start : start + batch_size], pad_id, device))
        mask = (targets != IGNORE).float()
        log_p = torch.log_softmax(logits, dim=-1)
        picked = log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        logprobs.extend((picked * mask).sum(dim=1).tolist())
        counts.extend(mask.sum(dim=1).int().tolist())
        if entropy:
            per_position = -(log_p.exp() * log_p).sum(dim=-1)
            entropies.extend((per_position * mask).sum(dim=1).tolist())
    return logprobs, entropies, counts


def reference(model):
    """The reference policy: the model with its LoRA adapter disabled (a context manager)."""
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    raise ValueError("KL to the base model needs a LoRA adapter to disable (or a frozen reference model).")


def kl_and_entropy(
    model,
    examples: list[dict],
    pad_id: int,
    batch_size: int = 32,
    ref_model=None,
    policy_logprobs: list[float] | None = None,
    entropy_sums: list[float] | None = None,
) -> dict:
    """Sums over `examples` (the policy's own samples): `kl_sum`, `entropy_sum` (None when unknown), `tokens`,
    `samples`. The caller gathers the sums across ranks and divides: KL per sample, entropy per token. `ref_model`
    is a frozen reference; without it the reference is `model` with its adapter disabled. `policy_logprobs` (and
    `entropy_sums`), one per example, are the sampler's: the policy's own pass is then skipped."""
    was_training = model.training
    model.eval()
    if policy_logprobs is None:
        policy, entropies, counts = completion_logprobs(model, examples, pad_id, batch_size, entropy=True)
    else:
        policy, entropies = policy_logprobs, entropy_sums
        counts = [sum(1 for label in ex["labels"] if label != IGNORE) for ex in examples]
    context = contextlib.nullcontext() if ref_model is not None else reference(model)
    with context:
        ref, _, _ = completion_logprobs(ref_model or model, examples, pad_id, batch_size)
    model.train(was_training)
    return {
        "kl_sum": sum(p - q for p, q in zip(policy, ref, strict=True)),
        "entropy_sum": sum(entropies) if entropies is not None else None,
        "tokens": sum(counts),
        "samples": len(examples),
    }
