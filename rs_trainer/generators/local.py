"""In-process sampling with `transformers` (`rs_trainer.phases.generation.generate`): the policy itself, or a frozen
model such as a teacher, loaded for the round and released after it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from rs_trainer.generators.handoff import PolicyWeights, RunContext
from rs_trainer.phases.generation import SamplingParams, encode_prompts, generate
from rs_trainer.run.models import release


class LocalGenerator:
    """`model` samples in this process. With `own_tokenizer`, prompts are rendered with this model's tokenizer
    and chat template (a teacher of another family); the completion text is what travels on. As the policy's
    generator (`for_policy`), each round samples the live model, on full weights, for as long as it is open."""

    in_process = True  # decodes in the training process: the run's evaluation and rationalization go through it

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 0,
        engine: str = "auto",
        own_tokenizer: bool = False,
        token_budget: int = 0,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.engine, self.own_tokenizer = batch_size, engine, own_tokenizer
        self.token_budget = token_budget

    @classmethod
    def for_policy(cls, run: RunContext) -> LocalGenerator:
        return cls(None, run.tokenizer, run.batch_size, run.local_engine, token_budget=run.token_budget)

    @contextlib.contextmanager
    def open(self, weights: PolicyWeights, params: SamplingParams):
        """The live model is the round's policy: nothing to hand over."""
        with weights.live() as model:
            self.model = model
            try:
                yield self
            finally:
                self.model = None

    def generate(
        self,
        prompts: list[dict],
        prompt_ids: list[list[int]],
        num_samples: int,
        params: SamplingParams,
        seed: int = 0,
        on_batch: Callable[[list[dict]], None] | None = None,
    ) -> list[dict]:
        if self.own_tokenizer:
            prompt_ids = encode_prompts(self.tokenizer, prompts)
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            num_samples,
            params,
            batch_size=self.batch_size,
            seed=seed,
            prompt_ids=prompt_ids,
            on_batch=on_batch,
            engine=self.engine,
            token_budget=self.token_budget,
        )


class FrozenGenerator(LocalGenerator):
    """A fixed model (a teacher) sampling in this process: loaded when its round opens, and released after it,
    before the next generator or SFT needs the memory."""

    def __init__(self, name: str, run: RunContext):
        super().__init__(
            None, None, run.batch_size, run.local_engine, own_tokenizer=True, token_budget=run.token_budget
        )
        self.name, self.run = name, run

    @contextlib.contextmanager
    def open(self, weights: PolicyWeights, params: SamplingParams):
        from rs_trainer.run.sharding import Sharding

        with Sharding.frozen_load():
            self.model, self.tokenizer = load_frozen(self.name, self.run.model_args, self.run.accelerator.device)
        try:
            yield self
        finally:
            self.model = None  # the only reference: the memory is free before the next generator
            release()


def load_frozen(name: str, model_args, device) -> tuple:
    """A frozen model and its tokenizer, in eval mode on `device`, with the policy's dtype and attention keys."""
    import dataclasses

    from rs_trainer.run.models import load_policy, load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(name))
    frozen_args = dataclasses.replace(model_args, model_name_or_path=name, use_peft=False)
    model, _ = load_policy(frozen_args)
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        model.to(device)
    model.requires_grad_(False).eval()
    return model, tokenizer
