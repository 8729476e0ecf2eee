"""A recipe's `generators:` list, checked into `GeneratorSpec`s. Pure: no model, no network."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rs_trainer.errors import ConfigError

ENGINES = ("local", "vllm", "openai", "server")
APIS = ("completions", "chat")
ADAPTER_APIS = ("vllm", "sglang")
POLICY = "policy"  # `model` value (or no `model`) that means the model being trained


@dataclass
class GeneratorSpec:
    """One source of samples in a round. Keys, as written in a recipe's `generators:` list:

    - `name` (`str`): unique; written on every row it generates (`generator`) and used in metric names.
    - `engine` (`str`, *optional*, defaults to `"local"`): `local` (in-process `transformers`), `vllm` (`vllm.LLM`
      in the training process, refreshed each round), `openai` (an endpoint that is already running, at
      `base_url`) or `server` (started by rs_trainer each round from `command`).
    - `model` (`str`, *optional*): `local` and `vllm`: a frozen model (hub id, folder or `embedded:<name>`), default
      the policy;
      `openai`: the served model's name; `server`: a fixed model to serve, default the policy's latest weights.
    - `num_generations` (`int`, *optional*): default the recipe's `num_generations`.
    - `temperature`, `top_p`, `top_k`, `min_p`, `max_completion_length` (*optional*): override the round's
      sampling values.
    - `base_url` (`str`): `openai` only, e.g. `http://127.0.0.1:8000/v1`.
    - `api_key_env` (`str`, *optional*): the environment variable that holds the API key; the key itself is never
      written to a recipe or to disk.
    - `api` (`str`, *optional*, defaults to `"completions"`): `completions` sends the prompt rendered by our own
      chat template, so what is trained is exactly what was sampled; `chat` sends the messages and the server
      applies its own template (rows record `server_template: true`), for hosted APIs without a text endpoint.
    - `prompt_format` (`str`, *optional*, defaults to `"text"`): `tokens` sends the prompt as token ids (vLLM and
      SGLang take them), so the server cannot tokenize it differently.
    - `command` (`str`): `server` only, a template with `{model}`, `{host}` and `{port}`, e.g.
      `vllm serve {model} --host {host} --port {port}` or `transformers serve --host {host} --port {port}`.
    - `served_model` (`str`, *optional*): `server` only: the name requests use; default the `{model}` folder.
    - `startup_timeout` (`float`, *optional*, defaults to 600): seconds for a managed server to answer.
    - `max_concurrency` (`int`, *optional*, defaults to 8): requests in flight at once.
    - `timeout` (`float`, *optional*, defaults to 300): seconds for one request.
    - `max_retries` (`int`, *optional*, defaults to 5): retries of a request after a connection error, a 408, 409,
      429 or 5xx answer, or a timeout, with exponential backoff.
    - `logprobs` (`bool`, *optional*, defaults to `false`): ask for token log-probabilities and record their sum.
    - `extra_body` (`dict`, *optional*): extra request fields the server understands (vLLM's `top_k`,
      `transformers serve`'s `generation_config`).
    - `request_seed` (`bool` or `"auto"`, *optional*, defaults to `"auto"`): send each request its own seed, so a
      rerun draws the same samples. `auto` sends none to a vLLM server (its `/v1/models` says `owned_by: vllm`):
      vLLM's CPU build crashes on seeded requests whose prompt is split over steps (chunked prefill), and a client
      cannot tell a CPU server from a GPU one. Without seeds a rerun of a round draws other samples; the rows
      already on disk are kept, so a resumed run still loses and doubles nothing.
    - `gpu_memory_utilization` (`float`, *optional*, defaults to 0.3), `tensor_parallel_size` (`int`, defaults to
      1), `enable_sleep_mode` (`bool`, defaults to `false`): `vllm` only, as in TRL's `vllm_*` keys; sleep mode
      frees the engine's memory during SFT (GPU only: vLLM's CPU build ignores it).
    - `vllm_kwargs` (`dict`, *optional*): `vllm` only, further `vllm.LLM` arguments, over rs_trainer's own.
    - `adapter_api` (`str`, *optional*): `openai` only, for an endpoint that stays up and serves the policy: `vllm`
      (started with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) or `sglang`. Round 0 samples
      from `model` (the base model); every later round loads the previous round's LoRA adapter through the
      server's adapter-loading endpoint under a new name, samples from it, and unloads it right after.
    """

    name: str
    engine: str = "local"
    model: str | None = None
    num_generations: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    max_completion_length: int | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    api: str = "completions"
    prompt_format: str = "text"
    command: str | None = None
    served_model: str | None = None
    startup_timeout: float = 600.0
    max_concurrency: int = 8
    timeout: float = 300.0
    max_retries: int = 5
    logprobs: bool = False
    extra_body: dict = field(default_factory=dict)
    request_seed: bool | str = "auto"
    gpu_memory_utilization: float = 0.3
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = False
    vllm_kwargs: dict = field(default_factory=dict)
    adapter_api: str | None = None

    @property
    def is_policy(self) -> bool:
        """Samples from the model being trained (so the next round's come from this round's weights)."""
        if self.engine == "openai":
            return self.adapter_api is not None
        return self.model in (None, POLICY)

    @property
    def samples_training_weights(self) -> bool:
        """Samples from the very weights being trained, in the training process (`local` or colocated `vllm` policy):
        its rows are the policy's own samples, on which drift (KL to the base model, entropy) is measured and
        `max_kl` can act. A server's policy samples from a copy of last round's weights, through its own decoder.

        >>> specs = [GeneratorSpec("p", engine=e) for e in ("local", "vllm", "server")]
        >>> [(s.engine, s.samples_training_weights, s.seeds_each_request) for s in specs]
        [('local', True, False), ('vllm', True, True), ('server', False, True)]
        >>> GeneratorSpec("teacher", engine="vllm", model="org/teacher").samples_training_weights
        False
        """
        return self.is_policy and self.engine in ("local", "vllm")

    @property
    def seeds_each_request(self) -> bool:
        """Seeds every request by (seed, prompt, sample) (servers, vLLM), so its rows do not depend on which rank
        sent them; the in-process `rs` engine draws from one seeded stream per rank instead."""
        return self.engine != "local"


def parse_generators(entries: list[dict] | None, default_samples: int) -> list[GeneratorSpec]:
    """The recipe's `generators` list as specs; none listed means one: the policy, in-process (`policy`)."""
    if not entries:
        return [GeneratorSpec(name=POLICY, num_generations=default_samples)]
    if not isinstance(entries, list):
        raise ConfigError("`generators` must be a list of mappings, each with at least a `name`.")
    known = {f.name for f in dataclasses.fields(GeneratorSpec)}
    specs = []
    for i, entry in enumerate(entries):
        where = f"`generators[{i}]`"
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ConfigError(f"{where} needs a `name` (a mapping such as `{{name: teacher, model: ...}}`).")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(f"{where} ({entry['name']}): unknown keys {unknown}; the keys are {sorted(known)}.")
        spec = GeneratorSpec(**entry)
        spec.num_generations = spec.num_generations or default_samples
        _check(spec, where)
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"`generators` names must be unique, got {names}.")
    return specs


def _check(spec: GeneratorSpec, where: str) -> None:
    where = f"{where} ({spec.name})"
    if spec.engine not in ENGINES:
        raise ConfigError(f"{where}: `engine` {spec.engine!r} is unknown; choose one of {ENGINES}.")
    if spec.api not in APIS:
        raise ConfigError(f"{where}: `api` {spec.api!r} is unknown; choose one of {APIS}.")
    if spec.prompt_format not in ("text", "tokens"):
        raise ConfigError(f"{where}: `prompt_format` must be `text` or `tokens`, got {spec.prompt_format!r}.")
    if spec.prompt_format == "tokens" and spec.api == "chat":
        raise ConfigError(f"{where}: `prompt_format: tokens` needs `api: completions`.")
    if spec.num_generations < 1:
        raise ConfigError(f"{where}: `num_generations` must be at least 1.")
    if spec.engine == "openai":
        if not spec.base_url or not spec.model:
            raise ConfigError(
                f"{where}: `engine: openai` needs `base_url` (e.g. http://127.0.0.1:8000/v1) and `model`."
            )
    elif spec.base_url or spec.api_key_env or spec.adapter_api:
        raise ConfigError(f"{where}: `base_url`, `api_key_env` and `adapter_api` are for `engine: openai`.")
    if spec.adapter_api not in (None, *ADAPTER_APIS):
        raise ConfigError(f"{where}: `adapter_api` must be one of {ADAPTER_APIS}, got {spec.adapter_api!r}.")
    if spec.engine == "server":
        if not spec.command or "{port}" not in spec.command:
            raise ConfigError(
                f"{where}: `engine: server` needs a `command` template with `{{port}}` (and `{{model}}`, `{{host}}`), "
                "e.g. `vllm serve {model} --host {host} --port {port}`."
            )
        try:
            spec.command.format(model="m", host="h", port=1)
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(
                f"{where}: `command` has a placeholder other than {{model}}, {{host}}, {{port}} ({err}); write "
                "literal braces doubled, `{{` and `}}`."
            ) from None
    elif spec.command or spec.served_model:
        raise ConfigError(f"{where}: `command` and `served_model` are for `engine: server`.")
    if spec.engine in ("local", "vllm") and (
        spec.api != "completions" or spec.prompt_format != "text" or spec.extra_body or spec.request_seed != "auto"
    ):
        raise ConfigError(f"{where}: `api`, `prompt_format`, `extra_body` and `request_seed` are for server engines.")
    vllm_keys = {"gpu_memory_utilization": 0.3, "tensor_parallel_size": 1, "enable_sleep_mode": False}
    if spec.engine != "vllm" and (spec.vllm_kwargs or any(getattr(spec, k) != v for k, v in vllm_keys.items())):
        raise ConfigError(f"{where}: {sorted([*vllm_keys, 'vllm_kwargs'])} are for `engine: vllm`.")
    if spec.request_seed not in (True, False, "auto"):
        raise ConfigError(f"{where}: `request_seed` must be true, false or auto, got {spec.request_seed!r}.")
    if not 0 < spec.gpu_memory_utilization <= 1 or spec.tensor_parallel_size < 1:
        raise ConfigError(f"{where}: `gpu_memory_utilization` in (0, 1] and `tensor_parallel_size` >= 1, please.")
    if not isinstance(spec.vllm_kwargs, dict):
        raise ConfigError(f"{where}: `vllm_kwargs` must be a mapping of `vllm.LLM` arguments.")
    if spec.temperature is not None and spec.temperature < 0:
        raise ConfigError(f"{where}: `temperature` must be >= 0.")
    if spec.max_concurrency < 1 or spec.max_retries < 0 or spec.timeout <= 0:
        raise ConfigError(f"{where}: `max_concurrency` >= 1, `max_retries` >= 0 and `timeout` > 0, please.")
