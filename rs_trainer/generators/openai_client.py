"""Sampling through an OpenAI-compatible endpoint: vLLM, SGLang, TGI, llama.cpp's server, `transformers serve`, or
a hosted API.

- The text-completions endpoint gets the prompt rendered by our own tokenizer and chat template (as text, or as
  token ids with `prompt_format: tokens`), so what SFT trains on is exactly what was sampled. Chat completions are
  for endpoints without a text API; those rows record `server_template: true`.
- Requests run on a bounded pool of threads (`max_concurrency`); each has its own timeout, and connection errors,
  408/409/429/5xx answers and timeouts are retried with exponential backoff (`max_retries`), by the `openai`
  client, which is what its users already know.
- `n` is asked for; a server that ignores it (`transformers serve` does) answers with one choice, and the rest
  of that prompt's samples are then requested one by one, each with its own seed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from rs_trainer.errors import GeneratorError
from rs_trainer.generators.handoff import PolicyWeights, RunContext
from rs_trainer.generators.spec import GeneratorSpec
from rs_trainer.phases.generation import SamplingParams, render_prompt
from rs_trainer.run import seeds
from rs_trainer.run.openai_api import openai_client
from rs_trainer.run.ranks import on_main


def make_client(spec: GeneratorSpec, base_url: str):
    try:
        return openai_client(base_url, spec.api_key_env, spec.timeout, spec.max_retries)
    except ValueError as err:
        raise GeneratorError(f"generator {spec.name!r}: {err}") from None


def check_endpoint(
    spec: GeneratorSpec,
    base_url: str,
    model: str,
    log_tail: Callable[[], str] | None = None,
    params: SamplingParams | None = None,
):
    """Refuse an endpoint that does not answer, or that does not serve `model`, before any sampling.

    Some servers list only what they have loaded (`transformers serve` loads a folder on first request), so a
    model missing from `/v1/models` is tried with a one-token request before it is refused. That request carries
    `params`' temperature and top-p: `transformers serve --continuous-batching` applies its first request's
    sampling values to every later request."""
    import openai

    client = make_client(spec, base_url).with_options(max_retries=1, timeout=min(spec.timeout, 60))
    where = f"generator {spec.name!r} at {base_url}"
    tail = f"\nserver log (last lines):\n{log_tail()}" if log_tail else ""
    try:
        served = [m.id for m in client.models.list()]
    except openai.APIConnectionError as err:
        raise GeneratorError(f"{where} does not answer ({err}); start the server or fix `base_url`.{tail}") from None
    except openai.APIStatusError:
        served = []  # it answers, but cannot list (transformers serve without a hub cache): the probe decides
    if model in served and params is None:
        return
    try:
        probe(client, spec, model, params)
    except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
        raise GeneratorError(
            f"{where} refused the API key ({err.status_code}); set `api_key_env` to the variable that holds it."
        ) from None
    except openai.APIStatusError as err:
        raise GeneratorError(
            f"{where} does not serve model {model!r} (it lists {served[:5]}; a one-token request for it was "
            f"answered {err.status_code}: {str(err.message)[:200]}); fix the generator's `model`.{tail}"
        ) from None
    except openai.APIError as err:
        raise GeneratorError(f"{where}: a one-token request for {model!r} failed ({err}).{tail}") from None


def probe(client, spec: GeneratorSpec, model: str, params: SamplingParams | None = None) -> None:
    """A one-token request for `model`, with the sampling values that the run will use when they are known."""
    sampling = {"temperature": params.temperature, "top_p": params.top_p} if params is not None else {}
    if spec.api == "chat":
        messages = [{"role": "user", "content": "Hi"}]
        client.chat.completions.create(model=model, messages=messages, max_tokens=1, **sampling)
    else:
        client.completions.create(model=model, prompt="Hi", max_tokens=1, **sampling)


class OpenAIGenerator:
    """Samples from an OpenAI-compatible endpoint. `model` is the name requests use."""

    def __init__(self, spec: GeneratorSpec, base_url: str, model: str, tokenizer, log_tail=None):
        self.spec, self.base_url, self.model, self.tokenizer = spec, base_url, model, tokenizer
        self.log_tail = log_tail
        self.client = make_client(spec, base_url)
        self.honours_n: bool | None = None  # learnt from the first answer
        self.send_seed: bool | None = None if spec.request_seed == "auto" else bool(spec.request_seed)

    @contextlib.contextmanager
    def open(self, weights: PolicyWeights, params: SamplingParams):
        """An endpoint that stays up with a fixed model: nothing to hand over."""
        yield self

    def served_by(self) -> set[str]:
        """The `owned_by` of the endpoint's models (`vllm` for a vLLM server); empty when it cannot list them."""
        try:
            return {getattr(m, "owned_by", "") or "" for m in self.client.with_options(max_retries=1).models.list()}
        except Exception:  # noqa: BLE001 - any failure here only means "unknown"; sampling reports real errors
            return set()

    def generate(
        self,
        prompts: list[dict],
        prompt_ids: list[list[int]],
        num_samples: int,
        params: SamplingParams,
        seed: int = 0,
        on_batch: Callable[[list[dict]], None] | None = None,
    ) -> list[dict]:
        """Every prompt's `num_samples` completions; a prompt's rows reach `on_batch` together once all are in."""
        import openai

        if self.send_seed is None:  # `request_seed: auto`: none to vLLM (see GeneratorSpec)
            self.send_seed = "vllm" not in self.served_by()
        results: dict[str, list[dict]] = {}
        lock = threading.Lock()

        def one_prompt(i: int) -> None:
            rows = self._sample(prompts[i], prompt_ids[i], num_samples, params, seed)
            with lock:
                results[prompts[i]["prompt_id"]] = rows
                if on_batch:
                    on_batch(rows)

        pool = ThreadPoolExecutor(max_workers=self.spec.max_concurrency)
        try:
            futures = [pool.submit(one_prompt, i) for i in range(len(prompts))]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f.exception() for f in done if f.exception()), None)
            if failed is not None:
                for f in futures:
                    f.cancel()
                raise failed
        except openai.APIError as err:
            tail = f"\nserver log (last lines):\n{self.log_tail()}" if self.log_tail else ""
            code = getattr(err, "status_code", None)
            if code is not None and 400 <= code < 500 and code not in (408, 409, 429):
                raise GeneratorError(
                    f"generator {self.spec.name!r} at {self.base_url} (model {self.model!r}) refused a request "
                    f"({code}: {str(getattr(err, 'message', err))[:300]}); a rerun would be refused the same way: fix "
                    "the generator's settings (for a 400, `max_completion_length` against the server's context)."
                    f"{tail}"
                ) from None
            raise GeneratorError(
                f"generator {self.spec.name!r} at {self.base_url} (model {self.model!r}) failed after "
                f"{self.spec.max_retries} retries: {err}. Rows finished before are saved; rerun the same command "
                f"to resume.{tail}"
            ) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        self._check_sampling(results, num_samples, params)
        return [row for p in prompts for row in results[p["prompt_id"]]]

    def _check_sampling(self, results: dict[str, list[dict]], n: int, params: SamplingParams) -> None:
        """Warn when a server that should sample did not: every prompt's N completions identical. (`transformers
        serve` decodes greedily, whatever the temperature, when the model's generation config does not sample.)"""
        if params.temperature == 0 or n < 2 or len(results) < 4:
            return
        if all(len({row["completion"] for row in rows}) == 1 for rows in results.values()):
            warnings.warn(
                f"generator {self.spec.name!r} ({self.base_url}, model {self.model!r}) returned {n} identical "
                f"completions for each of {len(results)} prompts at temperature {params.temperature}: the server "
                "is probably not sampling; for `transformers serve`, set `do_sample: true` in the model's "
                "generation_config.json.",
                stacklevel=2,
            )

    # ------------------------------------------------------------------ one prompt
    def _sample(self, prompt: dict, ids: list[int], n: int, params: SamplingParams, seed: int) -> list[dict]:
        choices: list[tuple] = []
        start = time.perf_counter()
        while len(choices) < n:
            want = n - len(choices) if self.honours_n is not False else 1
            got = self._request(prompt, ids, want, params, seeds.request_seed(seed, prompt["prompt_id"], len(choices)))
            if not got:
                raise GeneratorError(
                    f"generator {self.spec.name!r} at {self.base_url} (model {self.model!r}) answered with no "
                    f"choices for prompt {prompt['prompt_id']!r}."
                )
            if want > 1 and self.honours_n is None:
                self.honours_n = len(got) == want
            choices.extend(got[:want])
        seconds = time.perf_counter() - start
        return [
            {
                "prompt_id": prompt["prompt_id"],
                "sample_index": s,
                **row,
                "generation_seconds": seconds / n,
            }
            for s, row in enumerate(choices)
        ]

    def _request(self, prompt: dict, ids: list[int], n: int, params: SamplingParams, seed: int) -> list[dict]:
        common = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if self.send_seed is not False:
            common["seed"] = seed
        if n > 1:
            common["n"] = n
        extra = dict(self.spec.extra_body)
        if params.top_k:
            extra.setdefault("top_k", params.top_k)
        if params.min_p:
            extra.setdefault("min_p", params.min_p)
        if self.spec.api == "chat":
            if self.spec.logprobs:
                common["logprobs"] = True
            out = self.client.chat.completions.create(messages=prompt["prompt"], extra_body=extra or None, **common)
            texts = [(c.message.content or "", c.finish_reason, _chat_logprob(c)) for c in out.choices]
        else:
            if self.spec.logprobs:
                common["logprobs"] = 1
            text = ids if self.spec.prompt_format == "tokens" else render_prompt(self.tokenizer, prompt["prompt"])
            out = self.client.completions.create(prompt=text, extra_body=extra or None, **common)
            texts = [(c.text, c.finish_reason, _text_logprob(c)) for c in out.choices]
        usage = getattr(out, "usage", None)
        rows = []
        for text, finish_reason, logprob in texts:
            finished = finish_reason == "stop"
            counted = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + finished
            tokens = usage.completion_tokens if usage is not None and len(texts) == 1 else counted
            row = {"completion": text, "completion_tokens": tokens, "finished": finished}
            row["finish_reason"] = finish_reason
            if logprob is not None:
                row["logprob"] = logprob
            if self.spec.api == "chat":
                row["server_template"] = True
            rows.append(row)
        return rows


def _text_logprob(choice) -> float | None:
    lp = getattr(choice, "logprobs", None)
    values = getattr(lp, "token_logprobs", None) if lp is not None else None
    return float(sum(v for v in values if v is not None)) if values else None


def _chat_logprob(choice) -> float | None:
    lp = getattr(choice, "logprobs", None)
    content = getattr(lp, "content", None) if lp is not None else None
    return float(sum(t.logprob for t in content)) if content else None


def adapter_endpoint(base_url: str, adapter_api: str, action: str) -> str:
    """vLLM serves `/v1/load_lora_adapter` beside its OpenAI routes; SGLang serves `/load_lora_adapter` at its
    root."""
    root = base_url.rstrip("/")
    if adapter_api == "sglang" and root.endswith("/v1"):
        root = root[: -len("/v1")]
    return f"{root}/{action}_lora_adapter"


def post_adapter(spec: GeneratorSpec, action: str, name: str, path: str | None = None) -> None:
    """Load (`action="load"`) or unload a LoRA adapter named `name` on the endpoint of `spec`, through the
    documented API of vLLM or SGLang (`{"lora_name": ..., "lora_path": ...}`)."""
    import json
    import urllib.error
    import urllib.request

    body = {"lora_name": name, **({"lora_path": path} if path else {})}
    url = adapter_endpoint(spec.base_url, spec.adapter_api, action)
    headers = {"Content-Type": "application/json"}
    if spec.api_key_env and os.environ.get(spec.api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[spec.api_key_env]}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=spec.timeout):
            return
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:300]
        raise GeneratorError(f"generator {spec.name!r}: POST {url} ({name}) answered {err.code}: {detail}") from None
    except OSError as err:
        raise GeneratorError(f"generator {spec.name!r}: POST {url} ({name}) failed: {err}") from None


class AdapterServedPolicy(OpenAIGenerator):
    """`engine: openai` with `adapter_api`: a server that stays up serves the policy. Round 0 samples the base
    model (`spec.model`); a later round loads the previous round's adapter under a new name
    (`<generator>-round<r-1>`), samples from it, and unloads it right after, so adapters never pile up in the
    server's memory. The main process loads and unloads; every rank samples."""

    def __init__(self, spec: GeneratorSpec, run: RunContext):
        super().__init__(spec, spec.base_url, spec.model, run.tokenizer)
        self.accelerator = run.accelerator

    @contextlib.contextmanager
    def open(self, weights: PolicyWeights, params: SamplingParams):
        spec, checkpoint = self.spec, weights.checkpoint if weights.round > 0 else None
        name = f"{spec.name}-round{weights.round - 1}" if checkpoint else spec.model

        def load() -> None:
            with contextlib.suppress(GeneratorError):  # left loaded by a run that was killed
                post_adapter(spec, "unload", name)
            post_adapter(spec, "load", name, str(checkpoint.resolve()))

        if checkpoint:
            on_main(self.accelerator, load, GeneratorError)
        self.model = name
        try:
            yield self
        finally:
            if checkpoint and self.accelerator.is_main_process:
                with contextlib.suppress(GeneratorError):
                    post_adapter(spec, "unload", name)
