"""The recipe keys of sampling and scoring (`GenerationKeys`, `TrlVllmKeys`, `ScoringKeys`), each field's facts in its
metadata (`rs_trainer.config.checks.key`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rs_trainer.config.checks import Range, key
from rs_trainer.errors import ConfigError
from rs_trainer.tasks import arithmetic


@dataclass
class GenerationKeys:
    """Generation: sampling, per round, and where samples come from."""

    num_generations: int = field(default=8, metadata=key("N: completions sampled per prompt.", range=Range(1)))
    temperature: list[str] = field(
        default_factory=lambda: [0.8],
        metadata=key(
            "Sampling temperature (per round), or `auto`: the round probes `temperature_grid` on "
            "`temperature_probe_prompts` of its prompts and samples at the one with the best expected best-of-N "
            "reward (rs_trainer/phases/temperature.py).",
            per_round=True,
        ),
    )
    temperature_grid: list[float] = field(
        default_factory=lambda: [0.6, 0.8, 1.0, 1.2],
        metadata=key(
            "`temperature: auto`: the temperatures the probe tries.",
            range=Range(0, open_low=True, note=" (the temperatures `temperature: auto` tries)"),
        ),
    )
    temperature_probe_prompts: int = field(
        default=8,
        metadata=key(
            "`temperature: auto`: prompts of the round sampled N times at every temperature of the grid; "
            "the extra cost is (grid size - 1) x these prompts' samples.",
            range=Range(1),
        ),
    )
    top_p: list[float] = field(
        default_factory=lambda: [1.0],
        metadata=key(
            "Nucleus sampling p (per round).",
            range=Range(0, 1, open_low=True, fix="; 1.0 turns nucleus sampling off"),
            per_round=True,
        ),
    )
    top_k: list[int] = field(
        default_factory=lambda: [0],
        metadata=key(
            "Sample from the k most likely tokens; 0 = off (per round).",
            range=Range(0, note=" (0 = off)"),
            per_round=True,
        ),
    )
    min_p: list[float] = field(
        default_factory=lambda: [0.0],
        metadata=key(
            "Drop tokens less likely than min_p x the most likely one's probability, after temperature, "
            "top-k and top-p, as transformers does; 0 = off (per round).",
            range=Range(0, 1, note=" (0 = off)"),
            per_round=True,
        ),
    )
    max_completion_length: list[int] = field(
        default_factory=lambda: [64],
        metadata=key("Completion length cap in tokens (per round).", range=Range(1), per_round=True),
    )
    generators: list[dict] = field(
        default_factory=list,
        metadata=key(
            "Where samples come from, each a mapping with a `name`: the policy in-process (the default when "
            "none is listed), a frozen model such as a teacher (`model: <path>`), an OpenAI-compatible endpoint "
            "(`engine: openai`, `base_url`, `model`) or a server rs_trainer starts each round (`engine: server`, "
            "`command`). Every key is documented in rs_trainer/generators/spec.py."
        ),
    )
    generation_batch_size: int = field(
        default=0,
        metadata=key(
            "Rows per generation batch; 0 picks by device (64 on CPU, 256 on GPU).",
            range=Range(0, note=" (0 picks by device)"),
            resumable=True,
        ),
    )
    generation_token_budget: int = field(
        default=0,
        metadata=key(
            "KV-cache tokens a generation batch may hold: rows x (longest prompt + max_completion_length) "
            "stay under it, and a batch that runs out of GPU memory is halved and retried; 0 picks by device "
            "(no budget on the CPU, 262144 tokens on a GPU).",
            range=Range(0, note=" (0 picks by device)"),
            resumable=True,
        ),
    )
    generation_engine: str = field(
        default="auto",
        metadata=key(
            "`rs`: one prefill per prompt shared by its N rows, finished rows dropped; `hf`: model.generate "
            "on N-times repeated prompts; `auto`: rs when the model's KV cache allows it.",
            choices=("auto", "rs", "hf"),
            resumable=True,
        ),
    )


@dataclass
class TrlVllmKeys:
    """TRL's vLLM keys (GRPOConfig's names), mapped onto the policy's one `generators` entry."""

    use_vllm: bool = field(
        default=False,
        metadata=key(
            "TRL's switch: the policy samples through vLLM (`vllm_mode`); the same as listing one "
            "`generators` entry, which `generators_from_trl_keys` writes (docs/generators.md#trls-vllm-keys)."
        ),
    )
    vllm_mode: str = field(
        default="colocate",
        metadata=key(
            "`colocate`: vLLM in every training process (`engine: vllm`); `server`: a `vllm serve` "
            "OpenAI server you started with `--enable-lora`, each round's adapter hot-loaded (LoRA only).",
            choices=("colocate", "server"),
        ),
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata=key("colocate: vLLM's share of the GPU.", range=Range(0, 1, open_low=True))
    )
    vllm_tensor_parallel_size: int = field(default=1, metadata=key("colocate: GPUs per vLLM engine.", range=Range(1)))
    vllm_enable_sleep_mode: bool = field(
        default=False, metadata=key("colocate: vLLM frees its memory while SFT runs (weights kept in host RAM).")
    )
    vllm_max_model_length: int | None = field(
        default=None,
        metadata=key(
            "colocate: vLLM's `max_model_len`; default the run's longest prompt plus completion.",
            range=Range(1, fix="; or leave it unset to size the engine to the run"),
        ),
    )
    vllm_server_base_url: str | None = field(
        default=None, metadata=key("server: the server's URL, e.g. http://127.0.0.1:8000 (`/v1` is added).")
    )
    vllm_server_host: str = field(default="0.0.0.0", metadata=key("server: host, without `vllm_server_base_url`."))
    vllm_server_port: int = field(
        default=8000, metadata=key("server: port, without `vllm_server_base_url`.", range=Range(1, 65535))
    )

    def _validate_trl_vllm_keys(self):
        """TRL's vLLM keys only with `use_vllm`, and `use_vllm` only without a `generators` list."""
        set_keys = [
            f.name
            for f in dataclasses.fields(TrlVllmKeys)
            if f.name != "use_vllm" and getattr(self, f.name) != f.default
        ]
        if set_keys and not self.use_vllm:
            raise ConfigError(
                f"{', '.join(f'`{k}`' for k in set_keys)} set but `use_vllm` is false; set `use_vllm: true`."
            )
        if self.use_vllm and self.generators:
            raise ConfigError(
                "`use_vllm` describes the policy's one generator, and `generators` lists its own; drop `use_vllm` and "
                "set `engine: vllm` on the policy's entry (docs/generators.md#trls-vllm-keys)."
            )

    def generators_from_trl_keys(self, model_name: str, use_peft: bool) -> None:
        """With `use_vllm`, TRL's vLLM keys become the policy's one `generators` entry (a no-op without it):

        - `vllm_mode: colocate`: `engine: vllm` in each training process, with `gpu_memory_utilization`,
          `tensor_parallel_size`, `enable_sleep_mode` and (`vllm_max_model_length`) `vllm_kwargs.max_model_len`;
        - `vllm_mode: server`: `engine: openai` against `vllm_server_base_url` (or host and port) plus `/v1`, serving
          `model_name`, each round's LoRA adapter hot-loaded (`adapter_api: vllm`). A `vllm serve` OpenAI server,
          not `trl vllm-serve` (whose weight-sync protocol is TRL's own); LoRA only, as a server that stays up gets
          a full model's new weights no other way here (`engine: server` restarts one each round instead).

        >>> from rs_trainer.config import RSConfig
        >>> args = RSConfig(use_vllm=True, vllm_gpu_memory_utilization=0.5, vllm_enable_sleep_mode=True)
        >>> args.generators_from_trl_keys("Qwen/Qwen2.5-1.5B-Instruct", use_peft=True)
        >>> args.generators
        [{'name': 'policy', 'engine': 'vllm', 'gpu_memory_utilization': 0.5, 'tensor_parallel_size': 1, \
'enable_sleep_mode': True}]
        >>> args = RSConfig(use_vllm=True, vllm_mode="server", vllm_server_base_url="http://10.0.0.2:8000/")
        >>> args.generators_from_trl_keys("Qwen/Qwen2.5-1.5B-Instruct", use_peft=True)
        >>> args.generators
        [{'name': 'policy', 'engine': 'openai', 'base_url': 'http://10.0.0.2:8000/v1', \
'model': 'Qwen/Qwen2.5-1.5B-Instruct', 'adapter_api': 'vllm'}]
        """
        if not self.use_vllm:
            return
        if self.vllm_mode == "colocate":
            entry = {
                "name": "policy",
                "engine": "vllm",
                "gpu_memory_utilization": self.vllm_gpu_memory_utilization,
                "tensor_parallel_size": self.vllm_tensor_parallel_size,
                "enable_sleep_mode": self.vllm_enable_sleep_mode,
            }
            if self.vllm_max_model_length is not None:
                entry["vllm_kwargs"] = {"max_model_len": self.vllm_max_model_length}
        else:
            if not use_peft:
                raise ConfigError(
                    "`vllm_mode: server` hot-loads each round's LoRA adapter into a server that stays up, so it needs "
                    "`use_peft: true`; for full fine-tuning use `vllm_mode: colocate`, or a `generators` entry with "
                    "`engine: server` that restarts the server on each round's weights (docs/generators.md)."
                )
            url = self.vllm_server_base_url or f"http://{self.vllm_server_host}:{self.vllm_server_port}"
            url = url.rstrip("/")
            entry = {
                "name": "policy",
                "engine": "openai",
                "base_url": url if url.endswith("/v1") else url + "/v1",
                "model": model_name,
                "adapter_api": "vllm",
            }
        self.generators = [entry]


@dataclass
class ScoringKeys:
    """Scoring: scorers, reward models, verifiers and what counts as a success."""

    reward_funcs: list[str] = field(
        default_factory=lambda: [arithmetic.VERIFIER],
        metadata=key(
            "Scorers: built-in names (numeric_answer, math_answer, code_tests), `reward_model:<hub id, "
            "folder or embedded:name>`, dotted paths to functions with TRL's reward signature "
            "`fn(prompts, completions, **columns) -> list[float | None]`, or an LLM judge as a mapping "
            "`{kind: judge, name, base_url or command, model, template, score}`, a process reward model `prm:<model>` "
            "or `{kind: prm, ...}`, or a generative reward model `{kind: likelihood, model, span, reduce}` "
            "(docs/options.md). Default: the "
            "verifier of the default dataset, builtin:arithmetic (numeric_answer)."
        ),
    )
    reward_weights: list[float] | None = field(
        default=None, metadata=key("Weight of each scorer in the total reward; default 1.0 each.", range=Range())
    )
    reward_model_refresh: str | None = field(
        default=None,
        metadata=key(
            "Llama 2's refresh: a reward-model recipe (as `rs-trainer reward-model` takes) to train a new "
            "reward model with before every round after the first, on pairs of the run's own samples so far ranked "
            "by the verifier (`eval_reward_funcs` stands in for the labellers), plus the first reward model's pairs. "
            "It replaces the `reward_model:` scorer of `reward_funcs`. Default off."
        ),
    )
    reward_model_refresh_pairs: int | None = field(
        default=None,
        metadata=key(
            "`reward_model_refresh`'s label budget: at most this many pairs from each round.",
            range=Range(1, fix="; or leave it unset for every pair"),
        ),
    )
    verifier_timeout: float = field(
        default=30.0,
        metadata=key(
            "Seconds `math_answer` may spend on one sample, in a worker process that is killed past it: the "
            "sample scores None (no opinion), is marked `timed_out` and counted in `rs/scorer_timeouts`.",
            range=Range(0, open_low=True),
        ),
    )
    verifier_workers: int = field(
        default=2,
        metadata=key(
            "Worker processes `math_answer` checks samples in, per training process.", range=Range(1), resumable=True
        ),
    )
    reward_model_device: str | None = field(
        default=None,
        metadata=key(
            "Device of `reward_model:` scorers, e.g. `cuda:1` to keep the reward model off the policy's "
            "GPU; default this process's GPU, else the CPU. Reward models score in bf16 on GPU.",
            resumable=True,
        ),
    )
    eval_reward_funcs: list[str] | None = field(
        default=None,
        metadata=key(
            "Scorers that judge held-out accuracy and pass@k (weights 1.0); default `reward_funcs`. With a "
            "reward model in `reward_funcs`, name the verifier here, so success is measured by ground truth."
        ),
    )
    pass_threshold: float = field(
        default=1.0,
        metadata=key("A sample with reward >= this counts as a success for pass@k and accuracy.", range=Range()),
    )
