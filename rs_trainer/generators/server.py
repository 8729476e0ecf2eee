"""A server that rs_trainer starts for a round and stops before SFT (`engine: server`).

The recipe gives the command as a template, e.g. `vllm serve {model} --host {host} --port {port}` or
`transformers serve --host {host} --port {port}`. The server is started in its own process group on a free
loopback port, waited for until `GET /v1/models` answers (with a timeout, and the tail of its log in any error),
and stopped with its whole process group, so the GPU memory it held is free for training.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from rs_trainer.errors import GeneratorError
from rs_trainer.generators.handoff import PolicyWeights, RunContext
from rs_trainer.generators.spec import GeneratorSpec
from rs_trainer.phases.generation import SamplingParams
from rs_trainer.run.ranks import on_main

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _die_with_parent() -> None:
    """In the server's process: SIGTERM it when the trainer dies, even by SIGKILL, so no server outlives its run
    holding a GPU and a port (Linux's PR_SET_PDEATHSIG; elsewhere, nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


class ManagedServer:
    """`with ManagedServer(command, model, log_path) as server:` ... `server.base_url` ... (stopped on exit)."""

    def __init__(self, command: str, model: str, log_path: Path, startup_timeout: float = 600.0, name: str = ""):
        self.port = free_port()
        self.command = command.format(model=model, host=HOST, port=self.port)
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.name = name
        self.base_url = f"http://{HOST}:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def log_tail(self) -> str:
        return tail(self.log_path)

    def start(self) -> ManagedServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                shlex.split(self.command),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as err:
            raise GeneratorError(f"generator {self.name!r}: `{self.command}` could not start: {err}") from None
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise GeneratorError(
                    f"generator {self.name!r}: `{self.command}` exited with code {self.process.returncode} before "
                    f"answering; its log ({self.log_path}) ends:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5):
                    return self
            except urllib.error.HTTPError:  # it answers, if not with a list (transformers serve: no hub cache)
                return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise GeneratorError(
            f"generator {self.name!r}: `{self.command}` did not answer on {self.base_url} within "
            f"{self.startup_timeout:.0f} s (`startup_timeout`); its log ends:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 30 s; idempotent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        try:  # children that outlived the leader
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process = None

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
        from rs_trainer.run.deepspeed import outside_zero3_init
        from rs_trainer.run.models import torch_dtype

        run = self.run
        with outside_zero3_init():  # rank 0 alone loads it: no collective partitioning
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
