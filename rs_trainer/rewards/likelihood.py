"""A generative reward model: a causal LM's log-likelihood of the completion's answer, as a scorer.

A scalar reward head on a small model learns the answer's form before its correctness (docs/results.md: on a right
answer and the same answer off by 1 or 2, every SmolLM2 and MiniLM reward model tried ranks at chance). A causal LM
that was trained on right answers (for instance the policy a verifier-selected run produced) already computes the
answer when it predicts it; its probability of the answer the completion states is a reward that reads the answer,
not the form. A `reward_funcs` entry:

    reward_funcs:
      - kind: likelihood
        model: outputs/smollm2-arithmetic-lora/round_1/checkpoint   # a causal LM, or a LoRA adapter folder
        name: answer_likelihood     # the scorer's name in rows and metrics (default `likelihood:<model>`)
        span: answer                # answer: the completion's last number; completion: all of its text
        context: prompt             # prompt: the answer after the prompt and `answer_prefix`; completion: in place
        answer_prefix: "The answer is "   # with context: prompt, what the model reads before the answer
        reduce: sum                 # sum or mean of the span's token log-probabilities

The model reads the prompt through its own chat template with the generation prompt, then `answer_prefix` and the
answer (`context: prompt`, the default for `span: answer`: how likely the model is to give this answer itself, in
the words of the prefix) or the completion with the answer in its place (`context: completion`), in one forward
pass per batch (length-sorted under a padded-token budget, halved on out-of-memory, as a reward model). The score
is the log-probability of the tokens that overlap the span, so it is at most 0. A completion without a number
(`span: answer`) or with an empty span scores None (no opinion). A LoRA adapter folder is merged into the base
model its `adapter_config.json` names.

Read in place, the answer can be gamed: a completion that ends on a number it copied (the question's "1 + 19 =",
or a wrong sum written twice, "= 22. The answer is 22.") makes that number near certain. In a whole run the policy
learned exactly that in one round (docs/results.md); `context: prompt` never shows the model the rest of the
completion. The prefix matters: with none, the answer is read where the model would start its reply, and a policy
that starts "1 + 19 = ..." finds "1" likelier than "20" (a run selected at chance with it).
"""

from __future__ import annotations

import dataclasses

import torch

from rs_trainer.errors import ConfigError
from rs_trainer.rewards.reward_model import RewardModelScorer, _joined, _messages, parse_model_entry
from rs_trainer.rewards.verifiers import last_number_span

LIKELIHOOD = "likelihood"
SPANS = ("answer", "completion")
CONTEXTS = ("prompt", "completion")
REDUCTIONS = ("sum", "mean")


@dataclasses.dataclass(frozen=True)
class LikelihoodSpec:
    """One `kind: likelihood` entry of `reward_funcs` (see the module docstring)."""

    model: str
    name: str = ""
    span: str = "answer"
    context: str = "prompt"
    answer_prefix: str = "The answer is "
    reduce: str = "sum"
    max_tokens_per_batch: int = 16384
    max_length: int | None = None

    @property
    def scorer_name(self) -> str:
        return self.name or f"{LIKELIHOOD}:{self.model}"


def parse_likelihood_entry(entry: dict, where: str) -> LikelihoodSpec:
    """A `kind: likelihood` mapping as a `LikelihoodSpec`, or a `ConfigError` naming `where`, the key and the fix.

    >>> parse_likelihood_entry({"kind": "likelihood", "model": "m"}, "x").span
    'answer'
    >>> parse_likelihood_entry({"kind": "likelihood", "model": "m", "span": "last"}, "`reward_funcs[0]`")
    Traceback (most recent call last):
    rs_trainer.errors.ConfigError: `reward_funcs[0]` (likelihood m): `span` 'last' is unknown; choose answer or \
completion.
    """
    choices = {"span": SPANS, "context": CONTEXTS, "reduce": REDUCTIONS}
    hint = "name a causal LM or a LoRA adapter folder"
    spec, label = parse_model_entry(entry, LikelihoodSpec, where, hint, choices)
    if not isinstance(spec.answer_prefix, str):
        raise ConfigError(f'{label}: `answer_prefix` must be text ("" for none), got {spec.answer_prefix!r}.')
    if spec.span == "completion" and "context" in entry and spec.context == "prompt":
        raise ConfigError(
            f"{label}: `span: completion` is read in place; drop `context: prompt` (or set `span: answer`)."
        )
    return spec


class LikelihoodScorer(RewardModelScorer):
    """Scores each completion by a causal LM's log-probability of its answer (or of all of it); TRL's reward
    signature."""

    def __init__(self, spec: LikelihoodSpec, device: str | torch.device | None = None):
        self.spec = spec
        super().__init__(
            spec.model, device=device, max_tokens_per_batch=spec.max_tokens_per_batch, max_length=spec.max_length
        )
        self.__name__ = spec.scorer_name
        if not self.tokenizer.is_fast:
            raise ValueError(f"{spec.model}'s tokenizer is not a fast one; the answer's tokens are found by offsets.")

    def load_model(self, path: str, dtype: torch.dtype, model_kwargs: dict):
        """A causal LM, or a LoRA adapter folder merged into its base model."""
        from rs_trainer.run.models import merged_policy

        return merged_policy(path, dtype=dtype)

    def encode(self, prompts: list, completions: list) -> list[dict]:
        """Per sample: `input_ids` (prompt, then completion), `attention_mask`, and `span`, the positions of the
        tokens to score (those overlapping the answer, or the completion), cut at `max_length`."""
        rows = []
        for prompt, completion in zip(prompts, completions, strict=True):
            text = _joined(_messages(completion, "assistant"))
            messages = _messages(prompt, "user")
            if self.tokenizer.chat_template:
                head = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            else:
                head = _joined(messages) + "\n\n"
            chars = (0, len(text)) if self.spec.span == "completion" else last_number_span(text)
            if chars is not None and self.spec.span == "answer" and self.spec.context == "prompt":
                prefix = self.spec.answer_prefix
                text, chars = prefix + text[chars[0] : chars[1]], (len(prefix), len(prefix) + chars[1] - chars[0])
            enc = self.tokenizer(head + text, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"][: self.max_length]
            span = []
            if chars is not None and chars[1] > chars[0]:
                lo, hi = len(head) + chars[0], len(head) + chars[1]
                span = [i for i, (a, b) in enumerate(enc["offset_mapping"][: len(ids)]) if a < hi and b > lo and i]
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "span": span})
        return rows

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float | None]:
        return self.score_encoded(self.encode(prompts, completions))

    def forward(self, rows: list[dict]) -> list[float | None]:
        """One forward pass over `rows`, padded on the right; each row's reduced log-probability of its span."""
        batch = self.padded(rows, ("input_ids", "attention_mask"))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        out = []
        for i, r in enumerate(rows):
            if not r["span"]:
                out.append(None)
                continue
            at = torch.tensor(r["span"], device=self.device)
            # the LM head on the positions that predict the span's tokens only, not over every token's vocabulary
            logits = self.model.get_output_embeddings()(hidden[i, at - 1]).float()
            logp = logits.log_softmax(-1).gather(1, ids[i, at][:, None])[:, 0]
            out.append((logp.sum() if self.spec.reduce == "sum" else logp.mean()).item())
        return out
