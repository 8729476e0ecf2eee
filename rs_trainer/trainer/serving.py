"""Where a round's samples come from, opened for the round and released after it: the policy in-process on full
weights, a frozen model (a teacher), an endpoint that stays up (with the policy's adapter hot-loaded), or a server
started for the round on the policy's latest weights. Also the round's sampling values."""

from __future__ import annotations

import contextlib
import json
import shutil

from rs_trainer.errors import GeneratorError
from rs_trainer.phases.generation import SamplingParams
from rs_trainer.phases.temperature import AUTO
from rs_trainer.run.deepspeed import outside_zero3_init
from rs_trainer.run.sharding import full_weights
from rs_trainer.trainer.ranks import on_main


def round_temperature(args, files, r: int) -> float:
    """The round's temperature: the recipe's, or with `auto` the one its probe chose (read back when resumed).
    Before the probe has chosen, the grid's first value: only the endpoint checks that precede sampling (and the
    probe's own server) see it."""
    value = args.for_round("temperature", r)
    if value != AUTO:
        return value
    path = files.temperature_probe(r)
    return json.loads(path.read_text())["temperature"] if path.exists() else args.temperature_grid[0]


def sampling_params(args, files, spec, r: int, temperature: float | None = None) -> SamplingParams:
    """The round's sampling values, with the generator's own where it sets them; the round's temperature is the
    recipe's or, with `auto`, the one its probe chose (`temperature` overrides both, for the probe)."""
    if temperature is None and spec.temperature is None:
        temperature = round_temperature(args, files, r)
    return SamplingParams.for_round(args, r, spec, temperature)


class Serving:
    """Opens each generator of the recipe for a round (`open`), on every rank; the main process starts and stops
    what runs once (servers, adapters loaded into a server)."""

    def __init__(self, inputs, policy):
        self.inputs, self.policy = inputs, policy

    def params(self, spec, r: int, temperature: float | None = None) -> SamplingParams:
        return sampling_params(self.inputs.args, self.inputs.files, spec, r, temperature)

    @contextlib.contextmanager
    def open(self, spec, r: int):
        """The generator `spec` for round `r`, ready to sample on every rank, and released afterwards: a frozen
        model loaded and freed, or a managed server started (by the main process) and stopped."""
        from rs_trainer.generators.local import LocalGenerator, load_frozen, release

        inputs = self.inputs
        args, acc = inputs.args, inputs.accelerator
        options = {"token_budget": args.generation_token_budget}
        if spec.engine == "local" and spec.is_policy:
            with full_weights(acc.unwrap_model(self.policy.model)) as model:
                yield LocalGenerator(
                    model, inputs.tokenizer, args.generation_batch_size, args.generation_engine, **options
                )
        elif spec.engine == "local":
            with outside_zero3_init():
                frozen = load_frozen(spec.model, inputs.model_args, acc.device)
            generator = LocalGenerator(
                *frozen, args.generation_batch_size, args.generation_engine, own_tokenizer=True, **options
            )
            try:
                yield generator
            finally:
                generator.model = None  # the only reference: the teacher's memory is free before the next generator
                release()
        elif spec.engine == "openai" and spec.is_policy:
            with self.hot_loaded_adapter(spec, r) as generator:
                yield generator
        elif spec.engine == "openai":
            yield inputs.endpoints[spec.name]
        else:
            with self.managed_server(spec, r) as generator:
                yield generator

    @contextlib.contextmanager
    def hot_loaded_adapter(self, spec, r: int):
        """A server that stays up serves the policy: round 0 samples the base model (`spec.model`); a later round
        loads the previous round's adapter under a new name (`<generator>-round<r-1>`), samples from it, and
        unloads it right after, so adapters never pile up in the server's memory."""
        from rs_trainer.generators.openai_client import OpenAIGenerator, post_adapter

        acc = self.inputs.accelerator
        checkpoint = self.inputs.files.checkpoint(r - 1) if r > 0 else None
        name = f"{spec.name}-round{r - 1}" if checkpoint else spec.model

        def load() -> None:
            with contextlib.suppress(GeneratorError):  # left loaded by a run that was killed
                post_adapter(spec, "unload", name)
            post_adapter(spec, "load", name, str(checkpoint.resolve()))

        if checkpoint:
            on_main(acc, load, GeneratorError)
        try:
            yield OpenAIGenerator(spec, spec.base_url, name, self.inputs.tokenizer)
        finally:
            if checkpoint and acc.is_main_process:
                with contextlib.suppress(GeneratorError):
                    post_adapter(spec, "unload", name)

    @contextlib.contextmanager
    def managed_server(self, spec, r: int):
        """Start `spec.command` on the main process (serving the policy's latest weights, written for the round, or
        `spec.model`), share its address with every rank, and stop it, whatever happens, before SFT."""
        from rs_trainer.generators.openai_client import OpenAIGenerator, check_endpoint
        from rs_trainer.generators.server import ManagedServer

        inputs = self.inputs
        started = []

        def start() -> tuple[str, str]:
            with outside_zero3_init():  # rank 0 alone loads it: no collective partitioning
                folder = self.write_served_model(r, self.params(spec, r).top_k) if spec.is_policy else spec.model
            server = ManagedServer(spec.command, folder, inputs.files.server_log(r, spec.name), spec.startup_timeout)
            started.append(server)
            server.name = spec.name
            server.start()
            address = (server.base_url, spec.served_model or folder)
            check_endpoint(spec, *address, log_tail=server.log_tail, params=self.params(spec, r))
            return address

        try:
            address = on_main(inputs.accelerator, start, GeneratorError)
            log_tail = started[0].log_tail if started else None
            yield OpenAIGenerator(spec, address[0], address[1], inputs.tokenizer, log_tail=log_tail)
        finally:
            for server in started:
                server.stop()
            if inputs.accelerator.is_main_process and spec.is_policy:
                shutil.rmtree(inputs.files.served_model(r), ignore_errors=True)

    def write_served_model(self, r: int, top_k: int) -> str:
        """The policy's current weights for round `r` as a plain model folder a server can load."""
        from rs_trainer.generators.checks import write_served_model
        from rs_trainer.run.models import torch_dtype

        inputs = self.inputs
        last = inputs.files.checkpoint(r - 1) if r > 0 else None
        dtype = torch_dtype(inputs.model_args.dtype)
        return write_served_model(
            inputs.files.served_model(r), inputs.model_path, last, dtype, inputs.tokenizer, top_k
        )
