"""A reward model as a scorer: any `AutoModelForSequenceClassification` checkpoint with one output.

The reward model reads text the way it was trained to: through its OWN tokenizer and chat template, never the
policy's. Inputs are sorted by length and packed into batches under a padded-token budget (rows x longest row),
so short completions are not padded to the length of long ones; scores come back in the original order.

Padding is always on the right, whatever the tokenizer's `padding_side`: real tokens then keep the positions they
have when scored alone (absolute position embeddings, as in BERT, would shift under left padding), and the attention
mask hides the padding. So a score does not depend on which batch the input landed in.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from rs_trainer.errors import ConfigError
from rs_trainer.run.models import check_model_folder, ensure_pad_token, resolve_model_path

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS_PER_BATCH = 16384


def _messages(x, role: str) -> list[dict]:
    """Conversational input passes through; a plain string (TRL's standard format) becomes one message."""
    return list(x) if isinstance(x, (list, tuple)) else [{"role": role, "content": str(x)}]


def _joined(messages: list[dict]) -> str:
    return "\n\n".join(str(m["content"]) for m in messages)


def parse_model_entry(entry: dict, spec_cls, where: str, model_hint: str, choices: dict, none_ok: bool = False):
    """The checks every model-backed `reward_funcs` mapping (`kind: prm`, `kind: likelihood`) shares, as a
    `ConfigError` naming `where`, the key and the fix: no unknown key, a `model` (`model_hint` says what to name),
    each key of `choices` among its values (None passes where `none_ok`: the scorer then picks a default), and a
    whole `max_tokens_per_batch` >= 1. Returns the `spec_cls` instance and the label the kind's own checks use."""
    label = f"{where} ({entry['kind']} {entry.get('name') or entry.get('model') or '?'})"
    known = {f.name for f in dataclasses.fields(spec_cls)} | {"kind"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ConfigError(f"{label}: unknown keys {unknown}; the keys are {sorted(known)}.")
    if not isinstance(entry.get("model"), str) or not entry["model"]:
        raise ConfigError(f"{label}: `model` is missing; {model_hint}.")
    spec = spec_cls(**{k: v for k, v in entry.items() if k != "kind"})
    for key, allowed in choices.items():
        value = getattr(spec, key)
        if not (none_ok and value is None) and value not in allowed:
            raise ConfigError(
                f"{label}: `{key}` {value!r} is unknown; choose {', '.join(allowed[:-1])} or {allowed[-1]}."
            )
    if not isinstance(spec.max_tokens_per_batch, int) or spec.max_tokens_per_batch < 1:
        raise ConfigError(f"{label}: `max_tokens_per_batch` must be a whole number >= 1.")
    return spec, label


TRAINING_METRICS = "reward_model_metrics.json"  # written by `rs-trainer reward-model` beside the model's folder


def training_metrics(model_path: str) -> dict | None:
    """What `rs-trainer reward-model` measured of the reward model at `model_path` (its held-out pairwise accuracy,
    same-form accuracy, ...), read from `reward_model_metrics.json` beside that folder; None for a model trained
    elsewhere."""
    import json
    from pathlib import Path

    found = Path(model_path).parent / TRAINING_METRICS
    return json.loads(found.read_text()) if found.is_file() else None


def next_batch(lengths: list[int], start: int, max_tokens: int) -> int:
    """End (exclusive) of the batch that starts at `start` in `lengths`, sorted longest first.

    Rows are added while rows x longest row (the first one) stays within `max_tokens`; a row longer than the budget
    gets a batch of its own. Lengths [8, 6, 5, 2, 2] with a budget of 16 make the batches [8, 6] and [5, 2, 2]:

    >>> next_batch([8, 6, 5, 2, 2], 0, 16), next_batch([8, 6, 5, 2, 2], 2, 16)
    (2, 5)
    """
    longest = max(lengths[start], 1)
    rows = max(1, max_tokens // longest)
    return min(len(lengths), start + rows)


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a sequence-classification reward model; TRL's reward signature.

    Args:
        model_name_or_path (`str`):
            Hub id, local folder or `embedded:<name>` of an `AutoModelForSequenceClassification` checkpoint
            with `num_labels=1`.
        device (`str` or `torch.device`, *optional*):
            Where the reward model lives; it may differ from the policy's. Defaults to the current CUDA device
            (each process of a multi-GPU run has its own), else CPU.
        dtype (`torch.dtype`, *optional*):
            Defaults to `torch.bfloat16` on CUDA and `torch.float32` elsewhere.
        max_tokens_per_batch (`int`, *optional*, defaults to `16384`):
            Padded tokens (rows x longest row) per forward pass. Halved for the rest of a call after a CUDA
            out-of-memory error.
        max_length (`int`, *optional*):
            Longer inputs are truncated on the tokenizer's `truncation_side`. Defaults to the smaller of the
            tokenizer's `model_max_length` and the model's `max_position_embeddings`.
        model_kwargs (`dict`, *optional*):
            Extra keyword arguments for `from_pretrained`, e.g. `{"revision": "main"}` or `{"num_labels": 1}`.

    Example:
    ```python
    scorer = RewardModelScorer("Skywork/Skywork-Reward-V2-Qwen3-0.6B", device="cuda:1")  # a hub model: not a doctest
    prompts = [[{"role": "user", "content": "2+2?"}]] * 2
    completions = [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]]
    scores = scorer(prompts, completions)  # one float per completion, higher is better
    ```
    """

    def __init__(
        self,
        model_name_or_path: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
        max_length: int | None = None,
        model_kwargs: dict | None = None,
    ):
        from transformers import AutoTokenizer

        if device is None:
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.__name__ = f"reward_model:{model_name_or_path}"  # TRL names reward columns after `__name__`
        self.max_tokens_per_batch = max_tokens_per_batch
        model_name_or_path = resolve_model_path(model_name_or_path)
        check_model_folder(model_name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        self.model = self.load_model(model_name_or_path, dtype, model_kwargs or {}).to(self.device).eval()
        # Batches need a pad token, and the model finds each row's last token by comparing with its own
        # `pad_token_id`, so the tokenizer and the model must agree on it.
        ensure_pad_token(self.tokenizer, self.model)
        self.pad_token_id = self.model.config.pad_token_id
        if self.pad_token_id is None:
            raise ValueError(
                f"Reward model {model_name_or_path!r} has neither a pad nor an end-of-sequence token; set "
                "`pad_token_id` in its config.json."
            )
        limits = [self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None)]
        self.max_length = max_length or min(n for n in limits if n)

    def load_model(self, path: str, dtype: torch.dtype, model_kwargs: dict):
        """The scoring model: a sequence classifier with one output."""
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **model_kwargs)
        if model.config.num_labels != 1:
            raise ValueError(
                f"Reward model {path!r} has {model.config.num_labels} outputs; a reward model needs one "
                "(`num_labels=1`). Pass model_kwargs={'num_labels': 1} to put a fresh one-output head on it."
            )
        return model

    # ------------------------------------------------------------------ text
    def render(self, prompt, completion) -> str | tuple[str, str]:
        """The text the reward model reads: its chat template over prompt + completion when it has one, else the
        pair (prompt text, completion text), which encoders such as BERT or DeBERTa join with their separator."""
        messages = _messages(prompt, "user") + _messages(completion, "assistant")
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return _joined(_messages(prompt, "user")), _joined(_messages(completion, "assistant"))

    def encode(self, prompts: list, completions: list) -> list[dict]:
        """One dict of token lists (`input_ids`, `attention_mask`, maybe `token_type_ids`) per sample, unpadded."""
        texts = [self.render(p, c) for p, c in zip(prompts, completions, strict=True)]
        kwargs = {"truncation": True, "max_length": self.max_length}
        if self.tokenizer.chat_template:  # the template already wrote the special tokens
            enc = self.tokenizer(texts, add_special_tokens=False, **kwargs)
        else:
            enc = self.tokenizer([t[0] for t in texts], [t[1] for t in texts], **kwargs)
        return [{k: enc[k][i] for k in enc} for i in range(len(texts))]

    # ------------------------------------------------------------------ scoring
    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        """Rewards in the order of `completions`. Other keyword arguments (dataset columns) are ignored."""
        return self.score_encoded(self.encode(prompts, completions))

    @torch.no_grad()
    def score_encoded(self, rows: list[dict]) -> list[float]:
        """Score encoded rows in length-sorted batches under the token budget; results in the order of `rows`."""
        oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
        lengths = [len(rows[i]["input_ids"]) for i in order]
        scores: list[float] = [0.0] * len(rows)
        budget, start = self.max_tokens_per_batch, 0
        while start < len(order):
            end = next_batch(lengths, start, budget)
            try:
                values = self.forward([rows[i] for i in order[start:end]])
            except oom as err:
                if end - start == 1:
                    raise RuntimeError(
                        f"One input of {lengths[start]} tokens does not fit on {self.device}; lower `max_length` "
                        "or put the reward model on a device with more free memory."
                    ) from err
                budget = (end - start) * lengths[start] // 2
                logger.warning("Reward model ran out of memory; lowering the batch budget to %d tokens.", budget)
                torch.cuda.empty_cache()
                continue
            for i, v in zip(order[start:end], values, strict=True):
                scores[i] = v
            start = end
        return scores

    def padded(self, rows: list[dict], keys=None) -> dict[str, torch.Tensor]:
        """The token lists `keys` (default: all) of `rows`, padded on the right to the longest row (the pad token for
        `input_ids`, 0 otherwise), as tensors on the scorer's device."""
        width = max(len(r["input_ids"]) for r in rows)
        batch = {}
        for key in keys or rows[0]:
            fill = self.pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows], device=self.device)
        return batch

    def forward(self, rows: list[dict]) -> list[float]:
        """One forward pass over `rows`, padded on the right to the longest; one float per row."""
        logits = self.model(**self.padded(rows)).logits
        return logits[:, 0].float().tolist()
