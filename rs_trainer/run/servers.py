"""A server process that rs_trainer starts and stops: a round's policy behind `engine: server`
(`rs_trainer.generators.server`) or a judge that the run serves itself (`rs_trainer.rewards.judge`, `command:`).

The command is a template, e.g. `vllm serve {model} --host {host} --port {port}` or `transformers serve --host
{host} --port {port}`. The server is started in its own process group on a free loopback port, waited for until
`GET /v1/models` answers (with a timeout, and the tail of its log in any error), and stopped with its whole process
group, so the memory it held is free again.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from rs_trainer.errors import GeneratorError

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


def die_with_parent() -> None:
    """In the server's process: SIGTERM it when the trainer dies, even by SIGKILL, so no server outlives its run
    holding a GPU and a port (Linux's PR_SET_PDEATHSIG; elsewhere, nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


class ManagedServer:
    """`with ManagedServer(command, model, log_path) as server:` ... `server.base_url` ... (stopped on exit).

    Its errors are `error` (a `GeneratorError` unless told otherwise) and begin with `label`, the recipe entry
    that asked for the server (`generator 'policy'`, `judge 'grader'`)."""

    def __init__(
        self,
        command: str,
        model: str,
        log_path: Path,
        startup_timeout: float = 600.0,
        name: str = "",
        label: str | None = None,
        error: type[Exception] = GeneratorError,
    ):
        self.port = free_port()
        self.command = command.format(model=model, host=HOST, port=self.port)
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.name = name
        self.label = label or f"generator {name!r}"
        self.error = error
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
                preexec_fn=die_with_parent,
            )
        except OSError as err:
            raise self.error(f"{self.label}: `{self.command}` could not start: {err}") from None
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.error(
                    f"{self.label}: `{self.command}` exited with code {self.process.returncode} before "
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
        raise self.error(
            f"{self.label}: `{self.command}` did not answer on {self.base_url} within "
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
