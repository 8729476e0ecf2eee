"""Worker processes for CPU-heavy scorers that a hung sample cannot stop: each sample gets `timeout` seconds, and a
worker that overruns is killed (SIGKILL) and replaced, its sample scored None.

math-verify guards `parse` and `verify` with SIGALRM, which works only on a process's main thread and does not stop
every pathological sympy call: `parse` of a tower of powers runs for ever (huggingface/Math-Verify#65), and such
calls hung whole training jobs (verl-project/verl#5839, NVIDIA-NeMo/Gym#1354). verl and NeMo-Gym moved the check into
processes they can kill; so does this. Workers start through `forkserver` (a clean server process forks them), not
by forking the trainer, whose threads (gloo, tokenizers, OpenMP) may hold locks at the fork.

    pool = KillablePool(check_one, workers=2, timeout=10.0)
    values, timed_out = pool.map(items)   # values[i] is None for each i in timed_out
"""

from __future__ import annotations

import atexit
import multiprocessing
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


def _serve(conn, fn: Callable, warmup: Callable | None) -> None:
    """A worker's loop: `warmup()` (imports), `"ready"`, then one item in, `("ok", fn(item))` or `("error", text)`
    out, until the pipe closes."""
    if warmup is not None:
        warmup()
    conn.send("ready")
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", fn(item))
        except Exception as err:  # a scorer's own error: reported to the caller, the worker lives on
            reply = ("error", f"{type(err).__name__}: {err}")
        conn.send(reply)


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: object  # the parent's end of the pipe
    ready: bool = False  # its warm-up done: a sample's time starts only then


class KillablePool:
    """`workers` processes running `fn` (a module-level function, item -> picklable result), started on first use;
    each runs `warmup` (its imports) before its first item, so that a start on a loaded machine never counts against
    a sample's `timeout`. Not thread-safe: one `map` at a time."""

    STARTUP_S = 300.0  # a worker that is not ready by then is a broken environment, not a slow sample

    def __init__(self, fn: Callable, workers: int, timeout: float, warmup: Callable | None = None):
        if workers < 1 or timeout <= 0:
            raise ValueError(f"a pool needs workers >= 1 and timeout > 0, got {workers} and {timeout}")
        self.fn, self.size, self.timeout, self.warmup = fn, workers, timeout, warmup
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        self.workers: list[_Worker] = []
        self.killed = 0  # workers killed over the pool's life (timeouts and deaths)

    def _start(self) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_serve, args=(child, self.fn, self.warmup), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.process.kill()
        worker.process.join()
        worker.conn.close()
        self.killed += 1
        fresh = self._start()
        self.workers[self.workers.index(worker)] = fresh
        return fresh

    def map(self, items: list) -> tuple[list, list[int]]:
        """`fn` of every item, in order, and the indices of the items that overran `timeout` or whose worker died
        while working on them (their value is None). A worker found dead before it got an item is replaced, and
        the item goes to its successor. An exception inside `fn` is raised here as a RuntimeError naming it."""
        from multiprocessing.connection import wait

        while len(self.workers) < min(self.size, max(len(items), 1)):
            self.workers.append(self._start())
        values, lost = [None] * len(items), []
        todo = deque(range(len(items)))
        busy: dict[int, tuple[int, float]] = {}  # worker position -> (item index, deadline)
        errors = []
        started = time.monotonic()
        while todo or busy:
            for position, worker in enumerate(list(self.workers)):
                if worker.ready and position not in busy and todo:
                    i = todo.popleft()
                    try:
                        worker.conn.send(items[i])
                    except OSError:  # it died while idle (killed from outside): the item waits for its successor
                        todo.appendleft(i)
                        self._replace(worker)
                        continue
                    busy[position] = (i, time.monotonic() + self.timeout)
            starting = [w for w in self.workers if not w.ready]
            if not busy and starting and time.monotonic() - started > self.STARTUP_S:
                raise RuntimeError(f"no worker of {self.fn.__name__} started within {self.STARTUP_S:g} s")
            soonest = min([deadline for _, deadline in busy.values()] or [time.monotonic() + 1.0])
            watched = [self.workers[p].conn for p in busy] + [w.conn for w in starting]
            ready = wait(watched, timeout=max(soonest - time.monotonic(), 0))
            for worker in [w for w in starting if w.conn in ready]:
                try:
                    worker.ready = worker.conn.recv() == "ready"
                except (EOFError, OSError):  # died while starting: its warm-up failed
                    raise RuntimeError(f"a worker of {self.fn.__name__} died while starting") from None
            for position in [p for p in busy if self.workers[p].conn in ready]:
                i, _ = busy.pop(position)
                try:
                    status, value = self.workers[position].conn.recv()
                except (EOFError, OSError):  # the worker died (killed from outside, out of memory)
                    self._replace(self.workers[position])
                    lost.append(i)
                    continue
                if status == "error":
                    errors.append(value)
                else:
                    values[i] = value
            now = time.monotonic()
            for position, (i, deadline) in list(busy.items()):
                if now >= deadline:
                    busy.pop(position)
                    self._replace(self.workers[position])
                    lost.append(i)
        if errors:
            raise RuntimeError(errors[0])
        return values, sorted(lost)

    def close(self) -> None:
        for worker in self.workers:
            worker.process.kill()
            worker.process.join()
            worker.conn.close()
        self.workers = []


_POOLS: dict[tuple, KillablePool] = {}


def shared_pool(fn: Callable, workers: int, timeout: float, warmup: Callable | None = None) -> KillablePool:
    """One pool per (function, size, timeout) in this process, closed at exit."""
    key = (fn, workers, timeout)
    if key not in _POOLS:
        _POOLS[key] = KillablePool(fn, workers, timeout, warmup)
    return _POOLS[key]


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
