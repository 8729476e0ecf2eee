"""Where a round's samples come from. A generator turns prompts into completions; the trainer never sees how.

The boundary (as nanochat's `Engine`: token ids or text in, completions out) is one method::

    generator.generate(prompts, prompt_ids, num_samples, params, seed, on_batch) -> list[dict]

`prompts` are the prompt dicts (`prompt_id`, `prompt` messages, dataset columns), `prompt_ids` their token ids as
rendered by our own tokenizer and chat template (the very tokens SFT trains on), `params` the round's
`SamplingParams`. It returns, and passes to `on_batch` as they finish, rows with `prompt_id`, `sample_index`
(0..num_samples-1), `completion` (text without the end token), `completion_tokens`, `finished`, and, where the
engine has them, `finish_reason` and `logprob`. A new engine plugs in by implementing this method and adding a
branch to `build_generator`; the trainer is not touched.

Engines here:
- `local`: in-process `transformers` decoding (`rs_trainer.phases.generation.generate`), of the policy or of a frozen
  model (a teacher) loaded for the round and released after it;
- `openai`: any OpenAI-compatible endpoint (vLLM, SGLang, TGI, llama.cpp's server, `transformers serve`, a hosted
  API), through the text-completions endpoint with our rendered prompt, or chat completions where an endpoint has
  no text API;
- `server`: a server that rs_trainer starts itself each round from a command template, serving the policy's latest
  weights (or a fixed model), and stops before SFT; its client is the `openai` engine.
"""

from __future__ import annotations

from rs_trainer.phases.generators.spec import GeneratorSpec, parse_generators

__all__ = ["GeneratorSpec", "parse_generators"]
