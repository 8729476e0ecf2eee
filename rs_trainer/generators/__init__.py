"""Where a round's samples come from. A generator turns prompts into completions; the trainer never sees how.

The boundary (as nanochat's `Engine`: token ids or text in, completions out) is one method, `Generator.generate`:

    generator.generate(prompts, prompt_ids, num_samples, params, seed, on_batch) -> list[dict]

`prompts` are the prompt dicts (`prompt_id`, `prompt` messages, dataset columns), `prompt_ids` their token ids as
rendered by our own tokenizer and chat template (the very tokens SFT trains on), `params` the round's
`SamplingParams`. It returns, and passes to `on_batch` as they finish, rows with `prompt_id`, `sample_index`
(0..num_samples-1), `completion` (text without the end token), `completion_tokens`, `finished`, and, where the
engine has them, `finish_reason` and `logprob` (see `rs_trainer.samples.SampleRow`). A new engine implements this
method; what it needs around a round (a model loaded and released, a server started and stopped, an adapter loaded
into a running server) is opened by the trainer for each round, one branch per engine.

Engines here:
- `local` (`local.py`): in-process `transformers` decoding (`rs_trainer.phases.generation.generate`), of the policy
  or of a frozen model (a teacher) loaded for the round and released after it;
- `openai` (`openai_client.py`): any OpenAI-compatible endpoint (vLLM, SGLang, TGI, llama.cpp's server,
  `transformers serve`, a hosted API), through the text-completions endpoint with our rendered prompt, or chat
  completions where an endpoint has no text API;
- `server` (`server.py`): a server that rs_trainer starts itself each round from a command template, serving the
  policy's latest weights (or a fixed model), and stops before SFT; its client is the `openai` engine.

`spec.py` reads a recipe's `generators:` list; `checks.py` holds what is checked and prepared before and between
rounds (sample index ranges, endpoints that answer, the served model's folder). Unlike the phases, these modules do
network and subprocess I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from rs_trainer.generators.spec import GeneratorSpec, parse_generators

if TYPE_CHECKING:
    from rs_trainer.phases.generation import SamplingParams

__all__ = ["Generator", "GeneratorSpec", "parse_generators"]


class Generator(Protocol):
    """What every engine implements (`LocalGenerator`, `OpenAIGenerator`)."""

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
