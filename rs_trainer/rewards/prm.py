"""A process reward model (PRM) as a scorer: it scores every step of a completion and aggregates the steps' scores.

A `reward_funcs` entry `prm:<hub id, folder or embedded:name>` takes the defaults below; a mapping sets them:

    reward_funcs:
      - kind: prm
        model: outputs/prm            # the PRM checkpoint
        name: prm                     # the scorer's name in rows and metrics (default `prm:<model>`)
        head: token_classification    # or `step_tag`; default from the checkpoint's architecture
        split_on: "\\n"               # how a completion is cut into steps (empty steps are dropped)
        step_tag: "\\n"               # written after each step; the score is read at its last token
        aggregate: min                # min, last, product or mean of the steps' scores

The input is the prompt (the PRM's own chat template with the generation prompt when it has one, else the messages'
text), then each step followed by `step_tag`, each piece tokenized on its own, as TRL's `PRMTrainer` builds its
training rows (its `step_separator` is our `step_tag`; a BOS token first when the tokenizer has one and no
template). The two heads published PRMs use:

- `token_classification`: an `AutoModelForTokenClassification` (what TRL's `PRMTrainer` trains; Qwen2.5-Math-PRM
  reads its two-class head the same way at its `<extra_0>` tag). A step's score is P(label 1) from the two logits
  at the tag's last token, or the sigmoid of a one-label head.
- `step_tag`: a causal LM read at the tag (Math-Shepherd: tag ` ки`, labels `+` and `-`). A step's score is
  softmax over the logits of `good_token` and `bad_token` there, the good one's share.

Rows are length-sorted and batched under a padded-token budget with the reward model's out-of-memory back-off
(`RewardModelScorer`). Each row keeps its steps' scores (`step_scores` in generations.jsonl). A step whose tag lies
beyond `max_length` is not read; a completion with no step read (empty, or cut entirely) scores None.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from rs_trainer.errors import ConfigError
from rs_trainer.rewards.reward_model import RewardModelScorer, _messages, parse_model_entry

PRM = "prm"
PRM_PREFIX = "prm:"  # also in rewards/__init__.py, which reads entries without importing torch
HEADS = ("token_classification", "step_tag")
AGGREGATES = ("min", "last", "product", "mean")
DEFAULT_TAGS = {"token_classification": "\n", "step_tag": " ки"}


@dataclasses.dataclass(frozen=True)
class PRMSpec:
    """One PRM entry of `reward_funcs` (see the module docstring)."""

    model: str
    name: str = ""
    head: str | None = None  # None: from the checkpoint's architecture
    split_on: str = "\n"
    step_tag: str | None = None  # None: the head's default (DEFAULT_TAGS)
    aggregate: str = "min"
    good_token: str = "+"
    bad_token: str = "-"
    max_tokens_per_batch: int = 16384
    max_length: int | None = None

    @property
    def scorer_name(self) -> str:
        return self.name or f"{PRM_PREFIX}{self.model}"


def parse_prm_entry(entry: str | dict, where: str) -> PRMSpec:
    """`prm:<model>` or a `kind: prm` mapping as a `PRMSpec`, or a `ConfigError` naming `where`, the key and the fix.

    >>> parse_prm_entry("prm:outputs/prm", "x").aggregate
    'min'
    >>> parse_prm_entry({"kind": "prm", "model": "m", "aggregate": "median"}, "`reward_funcs[0]`")
    Traceback (most recent call last):
    rs_trainer.errors.ConfigError: `reward_funcs[0]` (prm m): `aggregate` 'median' is unknown; choose min, last, \
product or mean.
    """
    if isinstance(entry, str):
        entry = {"kind": PRM, "model": entry[len(PRM_PREFIX) :]}
    choices = {"head": HEADS, "aggregate": AGGREGATES}
    hint = "name the PRM (hub id, folder or embedded:<name>)"
    spec, label = parse_model_entry(entry, PRMSpec, where, hint, choices, none_ok=True)
    for key in ("split_on", "good_token", "bad_token"):
        if not isinstance(getattr(spec, key), str) or not getattr(spec, key):
            raise ConfigError(f"{label}: `{key}` must be non-empty text, got {getattr(spec, key)!r}.")
    if spec.step_tag is not None and (not isinstance(spec.step_tag, str) or not spec.step_tag.strip(" ")):
        raise ConfigError(
            f"{label}: `step_tag` {spec.step_tag!r} marks no position to read a step's score at; give the tag the "
            f"PRM was trained with (TRL's `step_separator`, Math-Shepherd's ' ки'), or leave it out for the default."
        )
    return spec


def split_steps(text: str, split_on: str) -> list[str]:
    """A completion's steps: the pieces between `split_on`, stripped, the empty ones dropped.

    >>> split_steps("3 + 4 = 7\\n7 + 2 = 9\\n\\nThe answer is 9.\\n", "\\n")
    ['3 + 4 = 7', '7 + 2 = 9', 'The answer is 9.']
    >>> split_steps("  ", "\\n")
    []
    """
    return [step.strip() for step in text.split(split_on) if step.strip()]


def aggregate(scores: list[float], how: str) -> float | None:
    """The steps' scores as one reward: their `min`, the `last`, the `product` or the `mean`; None for no step.

    >>> [aggregate([0.9, 0.5, 0.8], how) for how in ("min", "last", "mean")]
    [0.5, 0.8, 0.7333333333333334]
    >>> round(aggregate([0.9, 0.5], "product"), 6), aggregate([], "min")
    (0.45, None)
    """
    if not scores:
        return None
    if how == "min":
        return min(scores)
    if how == "last":
        return scores[-1]
    if how == "product":
        return math.prod(scores)
    return sum(scores) / len(scores)


class PRMScorer(RewardModelScorer):
    """Scores each step of each completion with a PRM and aggregates them; TRL's reward signature. After a call,
    `step_scores` holds each sample's steps' scores (what `rewards.score` writes into the rows)."""

    def __init__(self, spec: PRMSpec, device: str | torch.device | None = None):
        self.spec = spec
        super().__init__(
            spec.model, device=device, max_tokens_per_batch=spec.max_tokens_per_batch, max_length=spec.max_length
        )
        self.__name__ = spec.scorer_name
        self.step_tag = spec.step_tag if spec.step_tag is not None else DEFAULT_TAGS[self.head]
        self.tag_ids = self.tokenizer.encode(self.step_tag, add_special_tokens=False)
        if not self.tag_ids:
            raise ValueError(f"`step_tag` {self.step_tag!r} is no token in {spec.model}'s tokenizer; name another.")
        if self.head == "step_tag":
            self.label_ids = [
                self._one_token(spec.good_token, "good_token"),
                self._one_token(spec.bad_token, "bad_token"),
            ]
        self.step_scores: list[list[float]] = []

    def load_model(self, path: str, dtype: torch.dtype, model_kwargs: dict):
        """A token classifier (`head: token_classification`) or a causal LM (`head: step_tag`); without `head`, the
        checkpoint's architecture decides."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

        head = self.spec.head
        if head is None:
            architectures = AutoConfig.from_pretrained(path).architectures or []
            if any(a.endswith("ForTokenClassification") for a in architectures):
                head = "token_classification"
            elif any(a.endswith("ForCausalLM") for a in architectures):
                head = "step_tag"
            else:
                raise ValueError(
                    f"{path} is neither a token classifier nor a causal LM (architectures {architectures}); set "
                    "`head: token_classification` or `head: step_tag`."
                )
        self.head = head
        if head == "step_tag":
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **model_kwargs)
        model = AutoModelForTokenClassification.from_pretrained(path, dtype=dtype, **model_kwargs)
        if model.config.num_labels not in (1, 2):
            raise ValueError(
                f"PRM {path} has {model.config.num_labels} labels per token; a step score is read from 2 (P(label "
                "1)) or 1 (its sigmoid)."
            )
        return model

    def _one_token(self, text: str, key: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"`{key}` {text!r} is {len(ids)} tokens in {self.spec.model}'s tokenizer; name one token."
            )
        return ids[0]

    # ------------------------------------------------------------------ input
    def prompt_ids(self, prompt) -> list[int]:
        messages = _messages(prompt, "user")
        if self.tokenizer.chat_template:  # the template writes the special tokens
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tokenizer.encode(text, add_special_tokens=False)
        ids = self.tokenizer.encode("\n\n".join(str(m["content"]) for m in messages), add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + ids

    def encode(self, prompts: list, completions: list) -> list[dict]:
        """Per sample: `input_ids` (prompt, then each step and the tag), `attention_mask`, and `read_at`, the
        position of each step's tag's last token that fits in `max_length`."""
        rows = []
        for prompt, completion in zip(prompts, completions, strict=True):
            text = "\n\n".join(str(m["content"]) for m in _messages(completion, "assistant"))
            ids = list(self.prompt_ids(prompt))
            read_at = []
            for step in split_steps(text, self.spec.split_on):
                ids += self.tokenizer.encode(step, add_special_tokens=False) + self.tag_ids
                read_at.append(len(ids) - 1)
            ids = ids[: self.max_length]
            rows.append(
                {"input_ids": ids, "attention_mask": [1] * len(ids), "read_at": [i for i in read_at if i < len(ids)]}
            )
        return rows

    # ------------------------------------------------------------------ scoring
    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float | None]:
        """The aggregated reward of each completion (None when no step was read); `step_scores` holds the steps'."""
        self.step_scores = self.score_encoded(self.encode(prompts, completions))
        return [aggregate(steps, self.spec.aggregate) for steps in self.step_scores]

    def forward(self, rows: list[dict]) -> list[list[float]]:
        """One forward pass over `rows`, padded on the right; each row's steps' scores."""
        batch = self.padded(rows, ("input_ids", "attention_mask"))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        rows_at = torch.tensor([i for i, r in enumerate(rows) for _ in r["read_at"]], dtype=torch.long)
        cols_at = torch.tensor([p for r in rows for p in r["read_at"]], dtype=torch.long)
        if self.head == "step_tag":  # the LM head on the tag positions only, not over every token's vocabulary
            hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[rows_at, cols_at])[:, self.label_ids]
            step = logits.float().softmax(-1)[:, 0]
        else:
            logits = self.model(input_ids=ids, attention_mask=mask).logits[rows_at, cols_at].float()
            step = logits.softmax(-1)[:, 1] if logits.shape[-1] == 2 else logits[:, 0].sigmoid()
        values = step.tolist()
        out, at = [], 0
        for r in rows:
            out.append(values[at : at + len(r["read_at"])])
            at += len(r["read_at"])
        return out
