"""Where a round's samples come from. A generator turns prompts into completions; the trainer never sees how.

The boundary (as nanochat's `Engine`: token ids or text in, completions out) is one method, `Generator.generate`:

    generator.generate(prompts, prompt_ids, num_samples, params, seed, on_batch) -> list[dict]

`prompts` are the prompt dicts (`prompt_id`, `prompt` messages, dataset columns), `prompt_ids` their token ids as
rendered by our own tokenizer and chat template (the very tokens SFT trains on), `params` the round's
`SamplingParams`. It returns, and passes to `on_batch` as they finish, rows with `prompt_id`, `sample_index`
(0..num_samples-1), `completion` (text without the end token), `completion_tokens`, `finished`, and, where the
engine has them, `finish_reason` and `logprob` (see `rs_trainer.samples.SampleRow`). A new engine implements this
method, and takes the round's weights itself in a second one, a context manager the trainer enters around each
round's sampling:

    with generator.open(weights, params):   # weights: PolicyWeights (handoff.py); params: the round's values
        generator.generate(...)

The trainer never learns how: the in-process engine samples the live model; a colocated vLLM loads the round's
adapter or has the live weights pushed into it in place; a server that stays up hot-loads the adapter and unloads
it after; a managed server is started on a folder written for the round and stopped before SFT; a teacher is
loaded and released. `build_generator` makes each recipe entry's generator once per run.

Engines here:
- `local` (`local.py`): in-process `transformers` decoding (`rs_trainer.phases.generation.generate`), of the policy
  or of a frozen model (a teacher) loaded for the round and released after it;
- `vllm` (`vllm_engine.py`): `vllm.LLM` in the training process, kept for the run and refreshed each round;
- `openai` (`openai_client.py`): any OpenAI-compatible endpoint (vLLM, SGLang, TGI, llama.cpp's server,
  `transformers serve`, a hosted API), through the text-completions endpoint with our rendered prompt, or chat
  completions where an endpoint has no text API;
  with `adapter_api`, a server that stays up serves the policy through the round's hot-loaded adapter;
- `server` (`server.py`): a server that rs_trainer starts itself each round from a command template, serving the
  policy's latest weights (or a fixed model), and stops before SFT; its client is the `openai` engine.

`spec.py` reads a recipe's `generators:` list; `checks.py` holds what is checked and prepared before and between
rounds (sample index ranges, endpoints that answer, the served model's folder). Unlike the phases, these modules do
network and subprocess I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from rs_trainer.generators.handoff import PolicyWeights, RunContext
from rs_trainer.generators.spec import GeneratorSpec, parse_generators

if TYPE_CHECKING:
    from rs_trainer.phases.generation import SamplingParams

__all__ = ["Generator", "GeneratorSpec", "PolicyWeights", "RunContext", "build_generator", "parse_generators"]


def build_generator(spec: GeneratorSpec, run: RunContext, endpoint=None) -> Generator:
    """The generator of one recipe entry, for the whole run; `endpoint` is the checked client of a fixed
    `engine: openai` entry (`checks.check_generators`)."""
    if spec.engine == "local":
        from rs_trainer.generators.local import FrozenGenerator, LocalGenerator

        return LocalGenerator.for_policy(run) if spec.is_policy else FrozenGenerator(spec.model, run)
    if spec.engine == "vllm":
        from rs_trainer.generators.vllm_engine import VLLMGenerator

        return VLLMGenerator(spec, run)
    if spec.engine == "openai":
        from rs_trainer.generators.openai_client import AdapterServedPolicy

        return AdapterServedPolicy(spec, run) if spec.is_policy else endpoint
    from rs_trainer.generators.server import ServedGenerator

    return ServedGenerator(spec, run)


class Generator(Protocol):
    """What every engine implements (`LocalGenerator`, `FrozenGenerator`, `VLLMGenerator`, `OpenAIGenerator`,
    `AdapterServedPolicy`, `ServedGenerator`)."""

    def open(self, weights: PolicyWeights, params: SamplingParams) -> AbstractContextManager:
        """Ready to sample round `weights.round`'s policy (or its fixed model) with `params` until the context
        exits, which releases what the round held (a loaded model, a server, an adapter, an engine's memory)."""
        ...

    def generate(
        self,
        prompts: list[dict],
        prompt_ids: list[list[int]],
        num_samples: int,
        params: SamplingParams,
        seed: int = 0,
        on_batch: Callable[[list[dict]], None] | None = None,
    ) -> list[dict]:
        """`num_samples` completions of each prompt, as rows (see the module's docstring); `seed` makes them
        reproducible, and `on_batch` receives each batch of rows as it finishes, so that they can be saved."""
        ...
