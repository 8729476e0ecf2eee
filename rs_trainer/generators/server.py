"""A server that rs_trainer starts for a round and stops before SFT (`engine: server`).

The recipe gives the command as a template, e.g. `vllm serve {model} --host {host} --port {port}` or
`transformers serve --host {host} --port {port}`; `rs_trainer.run.servers.ManagedServer` starts it on a free
loopback port, waits until it answers, and stops its whole process group, so the GPU memory it held is free for
training.
"""

from __future__ import annotations

import contextlib
import shutil

from rs_trainer.errors import GeneratorError
from rs_trainer.generators.handoff import PolicyWeights, RunContext
from rs_trainer.generators.spec import GeneratorSpec
from rs_trainer.phases.generation import SamplingParams
from rs_trainer.run.ranks import on_main
from rs_trainer.run.servers import ManagedServer


class ServedGenerator:
    """`engine: server`: each round, the main process writes the policy's latest weights as a model folder (or
    takes `spec.model`), starts `spec.command` on it, checks that it answers, and shares its address with every
    rank; the server is stopped, and the folder removed, whatever happens, before SFT."""

    def __init__(self, spec: GeneratorSpec, run: RunContext):
        self.spec, self.run = spec, run
        self.client = None  # the round's `OpenAIGenerator`

    @contextlib.contextmanager
    def open(self, weights: PolicyWeights, params: SamplingParams):
        from rs_trainer.generators.openai_client import OpenAIGenerator, check_endpoint

        spec, run, r = self.spec, self.run, weights.round
        started: list[ManagedServer] = []

        def start() -> tuple[str, str]:
            folder = self._served_folder(weights, params) if spec.is_policy else spec.model
            server = ManagedServer(spec.command, folder, run.server_log(r, spec.name), spec.startup_timeout, spec.name)
            started.append(server)
            server.start()
            address = (server.base_url, spec.served_model or folder)
            check_endpoint(spec, *address, log_tail=server.log_tail, params=params)
            return address

        try:
            address = on_main(run.accelerator, start, GeneratorError)
            log_tail = started[0].log_tail if started else None
            self.client = OpenAIGenerator(spec, address[0], address[1], run.tokenizer, log_tail=log_tail)
            yield self
        finally:
            self.client = None
            for server in started:
                server.stop()
            if run.accelerator.is_main_process and spec.is_policy:
                shutil.rmtree(run.served_model(r), ignore_errors=True)

    def _served_folder(self, weights: PolicyWeights, params: SamplingParams) -> str:
        """The policy for round `weights.round` as a plain model folder a server can load."""
        from rs_trainer.generators.checks import write_served_model
        from rs_trainer.run.models import torch_dtype
        from rs_trainer.run.sharding import Sharding

        run = self.run
        with Sharding.frozen_load():  # rank 0 alone loads it: no collective partitioning
            return write_served_model(
                run.served_model(weights.round),
                run.model_path,
                weights.checkpoint,
                torch_dtype(run.model_args.dtype),
                run.tokenizer,
                params.top_k,
                params.min_p,
            )

    def generate(self, prompts, prompt_ids, num_samples, params, seed=0, on_batch=None) -> list[dict]:
        return self.client.generate(prompts, prompt_ids, num_samples, params, seed=seed, on_batch=on_batch)
