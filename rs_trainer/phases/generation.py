"""Batched sampling of N completions per prompt. Pure: takes a model and plain arguments, no Accelerator.

Speed choices (their measurements are in BENCHMARKS.md, "Generation"):
- rows are sorted by prompt length so a batch pads little, and the N copies of a prompt sit side by side;
- large batches (64 rows on the CPU) use the cores far better than small ones;
- the model's own dtype: bf16 on a CPU without native bf16 matmul is slower than fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rs_trainer.errors import ConfigError
from rs_trainer.run import seeds


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 64

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k or None,
            "min_p": self.min_p or None,
            "max_new_tokens": self.max_new_tokens,
        }

    @classmethod
    def for_round(cls, args, r: int, spec=None, temperature: float | None = None) -> SamplingParams:
        """Round `r`'s sampling values from the recipe's per-round keys, with a generator `spec`'s own where it
        sets them; `temperature` (a number) replaces the round's, which may be `auto` in the recipe."""

        def pick(key: str, own=None):
            return args.for_round(key, r) if own is None else own

        if temperature is None:
            temperature = pick("temperature", getattr(spec, "temperature", None))
        return cls(
            temperature=temperature,
            top_p=pick("top_p", getattr(spec, "top_p", None)),
            top_k=pick("top_k", getattr(spec, "top_k", None)),
            min_p=pick("min_p", getattr(spec, "min_p", None)),
            max_new_tokens=pick("max_completion_length", getattr(spec, "max_completion_length", None)),
        )


def check_prompt_lengths(prompts: list[dict], prompt_ids: list[list[int]], max_new: int, context: int | None) -> None:
    """Refuse, naming it, the first prompt that leaves no room for `max_new` tokens in the model's `context`."""
    for p, seq in zip(prompts, prompt_ids, strict=True):
        if context and len(seq) + max_new > context:
            raise ConfigError(
                f"Prompt {p['prompt_id']!r} is {len(seq)} tokens; with max_completion_length {max_new} it exceeds "
                f"the model's context of {context}. Shorten or drop it, or lower `max_completion_length`."
            )


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The text the model sees: the chat template with the generation prompt, or the plain contents."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages)


def encode_prompts(tokenizer, prompts: list[dict]) -> list[list[int]]:
    return [tokenizer(render_prompt(tokenizer, p["prompt"]), add_special_tokens=False)["input_ids"] for p in prompts]


def default_batch_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 64


def default_token_budget(device: torch.device) -> int:
    """KV-cache tokens per batch when `generation_token_budget` is 0: none on the CPU; on a GPU 262144, which is
    about 32 GiB of bf16 cache for an 8B Llama (128 KiB per token) and 256 rows of 1024 tokens."""
    return 262144 if device.type == "cuda" else 0


def plan_batches(
    lengths: list[int], num_samples: int, batch_size: int, token_budget: int, max_new_tokens: int
) -> list[list[int]]:
    """Prompt indices of each generation batch, longest prompts first. A batch holds whole prompts (the N rows of a
    prompt share one prefill), at most `batch_size` rows and, with a `token_budget`, at most that many KV-cache
    tokens: rows x (its longest prompt + `max_new_tokens`). A prompt whose N rows alone pass the budget gets a
    batch of its own.

    Example: prompts of 5, 50, 10 and 20 tokens, N=2, 10 new tokens, a budget of 200 tokens. The 50-token prompt
    needs 2 x 60 = 120 tokens, so it goes alone; the other three need 2 x 30 each, 180 together:
    >>> plan_batches([5, 50, 10, 20], num_samples=2, batch_size=8, token_budget=200, max_new_tokens=10)
    [[1], [3, 2, 0]]
    >>> plan_batches([5, 50, 10, 20], num_samples=2, batch_size=4, token_budget=0, max_new_tokens=10)
    [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    most = max(1, batch_size // num_samples)
    batches, start = [], 0
    while start < len(order):
        count = most
        if token_budget:
            per_prompt = num_samples * (lengths[order[start]] + max_new_tokens)
            count = max(1, min(most, token_budget // per_prompt))
        batches.append(order[start : start + count])
        start += count
    return batches


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[dict],
    num_samples: int,
    params: SamplingParams,
    batch_size: int = 0,
    seed: int = 0,
    prompt_ids: list[list[int]] | None = None,
    on_batch: Callable[[list[dict]], None] | None = None,
    engine: str = "auto",
    token_budget: int = 0,
) -> list[dict]:
    """Sample `num_samples` completions for every prompt.

    Returns one dict per completion, in (prompt order, sample_index) order: `prompt_id`, `sample_index`,
    `completion` (text, without the end token), `completion_tokens` (generated tokens, end token included) and
    `finished` (the end token was produced before `max_new_tokens`); the `rs` engine adds `completion_ids` (those
    tokens) and `logprob` and `entropy`, the sums over them of the sampled token's log-probability and of the
    next-token entropy under the model's raw distribution (temperature 1, no top-k or top-p), from the logits it
    decodes with: the policy's side of the drift measurement, with no second pass. `on_batch(rows)` is called
    with each finished batch's rows, for progress bars and for appending them to disk as they finish.

    `engine`: `rs` prefills each prompt once, repeats its KV cache N times and drops finished rows from the batch
    as it decodes; `hf` calls `model.generate` on the N-times repeated prompts; `auto` takes `rs` when the model's
    cache supports row selection.

    Batches follow `plan_batches` with `batch_size` rows and `token_budget` KV-cache tokens (0: by device); a batch
    that runs out of GPU memory is split in two and retried.
    """
    device = next(model.parameters()).device
    batch_size = batch_size or default_batch_size(device)
    token_budget = token_budget or default_token_budget(device)
    if prompt_ids is None:
        prompt_ids = encode_prompts(tokenizer, prompts)
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    if engine == "auto":
        engine = "rs" if supports_rs_engine(model) else "hf"
    if engine not in _ENGINES:
        raise ValueError(f"`generation_engine` must be one of auto, {', '.join(_ENGINES)}; got {engine!r}.")
    # Longest prompts first; a prompt's N rows stay adjacent and share one prefill (rs engine).
    todo = plan_batches([len(ids) for ids in prompt_ids], num_samples, batch_size, token_budget, params.max_new_tokens)
    results: dict[tuple[int, int], dict] = {}
    was_training = model.training
    model.eval()
    b = 0
    while todo:
        group = todo.pop(0)
        batch = [(i, s) for i in group for s in range(num_samples)]
        seqs = [prompt_ids[i] for i in group]
        width = max(len(s) for s in seqs)
        input_ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], device=device)
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
        try:
            gen_rows, stats = _ENGINES[engine](
                model, input_ids, attention, num_samples, params, eos_ids, pad_id, seeds.batch_seed(seed, b)
            )
        except torch.OutOfMemoryError:
            if len(group) == 1:
                raise ConfigError(
                    f"Prompt {prompts[group[0]]['prompt_id']!r} with its {num_samples} samples of up to "
                    f"{params.max_new_tokens} tokens does not fit in {device}'s memory; lower `num_generations` or "
                    "`max_completion_length`, or sample through a server (`generators`)."
                ) from None
            del input_ids, attention
            torch.cuda.empty_cache()
            half = len(group) // 2
            todo[:0] = [group[:half], group[half:]]  # the same prompts in two batches, the next batch index each
            continue
        b += 1
        for k, ((i, s), gen) in enumerate(zip(batch, gen_rows, strict=True)):
            end = next((j for j, t in enumerate(gen) if t in eos_ids), None)
            kept = gen if end is None else gen[:end]
            results[(i, s)] = {
                "prompt_id": prompts[i]["prompt_id"],
                "sample_index": s,
                "completion": tokenizer.decode(kept, skip_special_tokens=True),
                "completion_tokens": len(kept) + (end is not None),
                "finished": end is not None,
            }
            if stats is not None:  # the sums are over these very tokens (re-tokenizing the text may differ)
                ids = gen if end is None else gen[: end + 1]
                results[(i, s)].update(logprob=stats[0][k], entropy=stats[1][k], completion_ids=ids)
        if on_batch:
            on_batch([results[key] for key in batch])
    model.train(was_training)
    return [results[(i, s)] for i in range(len(prompts)) for s in range(num_samples)]


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, gen_eos):
        for t in value if isinstance(value, (list, tuple)) else [value]:
            if t is not None and t not in ids:
                ids.append(int(t))
    if not ids:
        raise ValueError("The tokenizer has no end-of-sequence token; set `eos_token` on it.")
    return ids


def supports_rs_engine(model) -> bool:
    """The rs engine needs a `DynamicCache` (full attention) whose rows can be repeated and selected."""
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    if getattr(config, "sliding_window", None) or getattr(config, "is_encoder_decoder", False):
        return False
    return hasattr(DynamicCache, "batch_select_indices") and hasattr(DynamicCache, "batch_repeat_interleave")


def _hf_generate(model, input_ids, attention, n, params, eos_ids, pad_id, seed) -> tuple[list[list[int]], None]:
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=input_ids.repeat_interleave(n, dim=0),
        attention_mask=attention.repeat_interleave(n, dim=0),
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        # transformers turns this on for FSDP and ZeRO-3 models (an all-reduce per step); the trainer samples from
        # full weights (`rs_trainer.run.sharding.full_weights`), so every rank decodes on its own.
        synced_gpus=False,
        **params.generate_kwargs(),
    )
    return out[:, input_ids.shape[1] :].tolist(), None


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens from last-position logits, with temperature, then top-k, then top-p, then min-p (the order of
    transformers' own logits processors). Temperature 0 is greedy."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - params.top_p)
        remove[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    probs = logits.softmax(dim=-1)
    if params.min_p > 0:  # the most likely token always stays: its probability is the bar's 1/min_p times
        probs = probs.masked_fill(probs < params.min_p * probs.amax(dim=-1, keepdim=True), 0.0)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _rs_generate(model, input_ids, attention, n, params, eos_ids, pad_id, seed) -> tuple[list[list[int]], tuple]:
    """Prefill each prompt once, repeat its cache N times, decode, and drop rows as they finish. Returns each row's
    tokens, and (logprob sums, entropy sums) over them under the raw distribution, end token included."""
    from transformers import DynamicCache

    device = input_ids.device
    generator = torch.Generator(device=device).manual_seed(seed)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = out.past_key_values
    cache.batch_repeat_interleave(n)
    attention = attention.repeat_interleave(n, dim=0)
    next_pos = positions[:, -1:].repeat_interleave(n, dim=0) + 1
    logits = out.logits[:, -1].repeat_interleave(n, dim=0)
    rows = input_ids.shape[0] * n
    generated: list[list[int]] = [[] for _ in range(rows)]
    alive = torch.arange(rows, device=device)  # original row of each live batch position
    eos = torch.tensor(eos_ids, device=device)
    logprob_sums = torch.zeros(rows, device=device)
    entropy_sums = torch.zeros(rows, device=device)
    for step in range(params.max_new_tokens):
        tokens = sample_next(logits, params, generator)
        for row, tok in zip(alive.tolist(), tokens.tolist(), strict=True):
            generated[row].append(tok)
        log_p = torch.log_softmax(logits.float(), dim=-1)
        logprob_sums[alive] += log_p.gather(1, tokens[:, None]).squeeze(1)
        entropy_sums[alive] += -(log_p.exp() * log_p).sum(dim=-1)
        done = torch.isin(tokens, eos)
        if step == params.max_new_tokens - 1:
            break
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            alive, tokens, attention, next_pos = alive[keep], tokens[keep], attention[keep], next_pos[keep]
        attention = torch.cat([attention, attention.new_ones(attention.shape[0], 1)], dim=1)
        out = model(
            input_ids=tokens[:, None],
            attention_mask=attention,
            position_ids=next_pos,
            past_key_values=cache,
            use_cache=True,
        )
        cache, logits, next_pos = out.past_key_values, out.logits[:, -1], next_pos + 1
    return generated, (logprob_sums.tolist(), entropy_sums.tolist())


_ENGINES = {"rs": _rs_generate, "hf": _hf_generate}
