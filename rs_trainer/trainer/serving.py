"""Where a round's samples come from: each recipe entry's generator, handed the round's policy weights and opened
for the round (the engines' own hand-offs live in `rs_trainer.generators`). Also the round's sampling values."""

from __future__ import annotations

import contextlib
import json

from rs_trainer.generators import PolicyWeights, RunContext, build_generator
from rs_trainer.generators.local import LocalGenerator
from rs_trainer.phases.generation import SamplingParams
from rs_trainer.phases.temperature import AUTO
from rs_trainer.run.ranks import log


def round_temperature(args, files, r: int) -> float:
    """The round's temperature: the recipe's, or with `auto` the one its probe chose (read back when resumed).
    Before the probe has chosen, the grid's first value: only the endpoint checks that precede sampling (and the
    probe's own server) see it."""
    value = args.for_round("temperature", r)
    if value != AUTO:
        return value
    probe = read_probe(files, r)
    return probe["temperature"] if probe else args.temperature_grid[0]


def read_probe(files, r: int) -> dict | None:
    """What round `r`'s temperature probe wrote (`temperature_probe.json`: its choice and table), None before it."""
    path = files.temperature_probe(r)
    return json.loads(path.read_text()) if path.exists() else None


def sampling_params(args, files, spec, r: int, temperature: float | None = None) -> SamplingParams:
    """The round's sampling values, with the generator's own where it sets them; the round's temperature is the
    recipe's or, with `auto`, the one its probe chose (`temperature` overrides both, for the probe)."""
    if temperature is None and spec.temperature is None:
        temperature = round_temperature(args, files, r)
    return SamplingParams.for_round(args, r, spec, temperature)


class Serving:
    """Each generator of the recipe, built once per run, and opened for a round (`open`) on every rank with the
    policy's weights of that round; each engine takes them its own way (`rs_trainer.generators`)."""

    def __init__(self, inputs, policy):
        self.inputs, self.policy = inputs, policy
        args, files = inputs.args, inputs.files
        self.run = RunContext(
            accelerator=inputs.accelerator,
            tokenizer=inputs.tokenizer,
            model_args=inputs.model_args,
            model_path=str(inputs.model_path),
            batch_size=args.generation_batch_size,
            local_engine=args.generation_engine,
            token_budget=args.generation_token_budget,
            max_model_len=inputs.sampling_len,
            server_log=files.server_log,
            served_model=files.served_model,
        )
        self.sized: set[str] = set()  # generators whose engine size was logged
        self.generators = {
            spec.name: build_generator(spec, self.run, inputs.endpoints.get(spec.name))
            for spec in inputs.generator_specs
        }
        policy = next((spec.name for spec in inputs.generator_specs if spec.is_policy), None)
        own = self.generators.get(policy)
        if getattr(own, "in_process", False):
            self.decoder, self.decoder_name = own, policy
        else:
            self.decoder, self.decoder_name = LocalGenerator.for_policy(self.run), "in-process"

    def params(self, spec, r: int, temperature: float | None = None) -> SamplingParams:
        return sampling_params(self.inputs.args, self.inputs.files, spec, r, temperature)

    def weights(self, r: int) -> PolicyWeights:
        """Round `r`'s policy: the base model in round 0, then the last round's checkpoint and the live model."""
        acc, files = self.inputs.accelerator, self.inputs.files
        return PolicyWeights(
            round=r,
            checkpoint=files.checkpoint(r - 1) if r > 0 else None,
            live=lambda: self.policy.sharding.full_weights(acc.unwrap_model(self.policy.model)),
            lora=bool(self.inputs.model_args.use_peft),
        )

    @contextlib.contextmanager
    def open(self, spec, r: int, temperature: float | None = None):
        """The generator `spec` for round `r`, ready to sample on every rank, and released afterwards."""
        generator = self.generators[spec.name]
        with generator.open(self.weights(r), self.params(spec, r, temperature)):
            self._log_size(spec.name, generator)
            yield generator

    @contextlib.contextmanager
    def open_decoder(self, r: int, params: SamplingParams):
        """Round `r`'s policy (0: the base model; r + 1 after round r's SFT), ready to decode on every rank with
        `params` (evaluation's greedy ones, rationalization's): the recipe's policy generator where it decodes in
        this process (`in_process`: the live model, a colocated vLLM), else the in-process sampler of the live
        model, since a server started or hot-loaded for every evaluation would cost more than it saves."""
        with self.decoder.open(self.weights(r), params):
            self._log_size(self.decoder_name, self.decoder)
            yield self.decoder

    def _log_size(self, name: str, generator) -> None:
        size = getattr(generator, "max_model_len", None)  # an in-process vLLM engine, once started
        if size is not None and name not in self.sized:
            self.sized.add(name)
            log(
                self.inputs.accelerator,
                f"generator {name!r}: vLLM engine with max_model_len {size} (the run's longest prompt, training, "
                f"evaluation or hinted, plus its longest completion: {self.run.max_model_len} tokens)",
            )
