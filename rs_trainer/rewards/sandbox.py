"""Run untrusted Python (a model's completion) under operating-system limits, and the `code_tests` scorer.

`run_program` starts a fresh interpreter in its own session and temporary folder, which runs `sandbox_prelude.py`
before the program. The prelude:
  - enters new network and pid namespaces when the kernel allows it (root directly, other users through a user
    namespace): no network but a downed loopback, and the program is pid 1, so every process it starts dies with
    it, even one that left its process group. In every case `socket.socket` is replaced by one that refuses anything
    but Unix sockets;
  - when started as root, becomes `nobody` (keeping only the right to read files, as the interpreter may live under
    /root), because `RLIMIT_NPROC` does not bind root;
  - sets `RLIMIT_AS` (memory), `RLIMIT_CPU`, `RLIMIT_NPROC` (fork bombs), `RLIMIT_FSIZE` (huge writes, and the
    captured output), `RLIMIT_NOFILE` and no core dumps.
Afterwards the whole process group is killed with SIGKILL, whether the program finished, timed out or crashed, and
the folder is deleted. Without a pid namespace, children that start a session of their own leave the group; they
still die of `RLIMIT_CPU`, and `RLIMIT_NPROC` bounds how many there can be.

The sandbox stops accidents and the obvious attacks (fork bombs, memory, disk, network, runaway loops, exiting
early to skip the tests); it is not a security boundary against a program written to break out of it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

NOBODY = 65534
PRELUDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_prelude.py")


@dataclass
class ProgramResult:
    """What `run_program` saw.

    `returncode` is negative when a signal ended the program (-9: SIGKILL, after the timeout or `RLIMIT_CPU`).
    `reached_end` is True when the program ran to its last line, rather than leaving through `sys.exit` or
    `os._exit`. `pgid` is the process group that was killed afterwards.
    """

    returncode: int
    reached_end: bool
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float
    pgid: int

    @property
    def passed(self) -> bool:
        """Exit code 0 at the program's last line, within the time limit."""
        return self.returncode == 0 and self.reached_end and not self.timed_out


def _wait_unreaped(pid: int, timeout_s: float) -> bool:
    """Wait for `pid` to exit without reaping it, so its id (the group's id) cannot be reused before `killpg`."""
    deadline, delay = time.monotonic() + timeout_s, 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(2 * delay, 0.02)
    return True


def run_program(
    code: str,
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    max_processes: int = 16,
    max_file_mb: int = 16,
    max_open_files: int = 64,
    max_output_bytes: int = 65536,
    python: str = sys.executable,
) -> ProgramResult:
    """Run the Python program `code` in a sandboxed subprocess and return its exit status and output.

    Args:
        code (`str`): the program, run as `__main__`.
        timeout_s (`float`, *optional*, defaults to `5.0`): wall-clock limit; CPU time is limited to it as well.
        memory_mb (`int`, *optional*, defaults to `1024`): address-space limit (`RLIMIT_AS`).
        max_processes (`int`, *optional*, defaults to `16`): `RLIMIT_NPROC`. It counts every process of the user
            the program runs as (`nobody` when started as root), so programs that run at once share it.
        max_file_mb (`int`, *optional*, defaults to `16`): largest file it may write, stdout and stderr included.
        max_open_files (`int`, *optional*, defaults to `64`): `RLIMIT_NOFILE`.
        max_output_bytes (`int`, *optional*, defaults to `65536`): how much of stdout and stderr to return.
        python (`str`, *optional*): the interpreter; defaults to this one.
    """
    workdir = tempfile.mkdtemp(prefix="rs-sandbox-")
    try:
        path = os.path.join(workdir, "program.py")
        with open(path, "w") as f:
            f.write(code)
        if os.geteuid() == 0:  # the program runs as nobody and may write in its own folder
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(path, NOBODY, NOBODY)
        limits = [memory_mb << 20, max(1, int(timeout_s + 0.999)), max_processes, max_file_mb << 20, max_open_files]
        env = {"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}  # no proxies, no tokens
        marker = b"\n" + secrets.token_hex(16).encode()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.monotonic()
            proc = subprocess.Popen(
                [python, "-I", "-B", PRELUDE, path, *map(str, limits)],
                cwd=workdir,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                try:
                    proc.stdin.write(marker[1:])
                    proc.stdin.close()
                except OSError:  # it died before reading
                    pass
                finished = _wait_unreaped(proc.pid, timeout_s)
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            seconds = time.monotonic() - start
            size = err.seek(0, os.SEEK_END)
            err.seek(max(0, size - len(marker)))
            reached_end = err.read() == marker
            stderr_size = size - len(marker) if reached_end else size
            texts = []
            for f, n in ((out, max_output_bytes), (err, min(max_output_bytes, stderr_size))):
                f.seek(0)
                texts.append(f.read(n).decode("utf-8", errors="replace"))
        return ProgramResult(proc.returncode, reached_end, not finished, texts[0], texts[1], seconds, proc.pid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _defines(code: str, name: str | None) -> bool:
    return bool(name) and re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def extract_program(text: str, entry_point: str | None = None) -> str:
    """The code in a completion: among its ```python (or bare ```) blocks the first that defines `entry_point`,
    else the longest; an unclosed last block counts. Without any block, the whole text."""
    blocks = _FENCE.findall(text)
    if not blocks:
        return text
    defining = [b for b in blocks if _defines(b, entry_point)]
    return defining[0] if defining else max(blocks, key=len)


def build_program(prompt, completion, test: str, entry_point: str | None = None) -> str:
    """The program to run: the completion's code, the row's tests, then `check(entry_point)` (HumanEval style).

    When the code does not define `entry_point` but the prompt is Python that does (HumanEval's prompt: a signature
    and docstring), the completion is taken as the function's continuation and the prompt goes first.
    """

    def content(x) -> str:
        return x[-1]["content"] if isinstance(x, list) else str(x)

    code = extract_program(content(completion), entry_point)
    if entry_point and not _defines(code, entry_point) and prompt is not None:
        head = extract_program(content(prompt), entry_point)
        try:
            compile(head, "<prompt>", "exec")
            if _defines(head, entry_point):
                code = head + code
        except (SyntaxError, ValueError):
            pass
    call = f"\n\ncheck({entry_point})\n" if entry_point else "\n"
    return f"{code}\n\n{test}{call}"


def make_code_tests(max_workers: int | None = None, **limits):
    """A `code_tests` scorer with other limits (keyword arguments of `run_program`) or pool size."""
    workers = max_workers or min(4, os.cpu_count() or 1)

    def code_tests(prompts, completions, test=None, entry_point=None, **kwargs) -> list[float | None]:
        """1.0 when the completion's program passes the row's unit tests (`test` defines `check(candidate)`, called
        as `check(<entry_point>)`) and exits 0 within the limits, else 0.0; None for a row without `test`."""
        n = len(completions)
        tests, entries, prompts = test or [None] * n, entry_point or [None] * n, prompts or [None] * n
        jobs = {i: build_program(prompts[i], completions[i], tests[i], entries[i]) for i in range(n) if tests[i]}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = dict(zip(jobs, pool.map(lambda code: run_program(code, **limits), jobs.values()), strict=True))
        return [None if i not in results else float(results[i].passed) for i in range(n)]

    return code_tests


code_tests = make_code_tests()
