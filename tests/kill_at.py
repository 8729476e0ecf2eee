"""Run `python -m rs_trainer` and SIGKILL it at an exact point: the first `os.replace` whose target is named
`$RS_KILL_AT`. Every file and folder the trainer writes goes through `os.replace` (`write_atomic`, `atomic_dir`,
figures), so this stops a real run just before a given output appears, with nothing in the trainer changed.

    RS_KILL_AT=generations.jsonl python tests/kill_at.py --config ...

With `RS_KILL_NODE=1` as well, the parent process (a `torchrun` agent) is killed first: the whole node dies, as when
a machine goes down, and no agent is left to report the failure to the other nodes.

Two points in the middle of a phase, where no file appears: `RS_KILL_AFTER_APPENDS=<n>` kills the run once its n-th
batch of rows is on disk (`append_jsonl`: generation), `RS_KILL_AFTER_STEPS=<n>` once its n-th optimizer step is
taken (SFT). A kill at an exact point, unlike a kill from outside when a file shows up, does not depend on how fast
the run goes against the test that watches it.
"""

import os
import signal
import sys
from pathlib import Path

_replace = os.replace


def replace_or_die(src, dst, *args, **kwargs):
    if Path(dst).name == os.environ.get("RS_KILL_AT"):
        if os.environ.get("RS_KILL_NODE") == "1":
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)


def die_on_the_nth_call(variable: str, fn=None):
    """`fn` (or nothing), then SIGKILL on the `$variable`-th call."""
    calls = [0]

    def call(*args, **kwargs):
        result = fn(*args, **kwargs) if fn is not None else None
        calls[0] += 1
        if calls[0] == int(os.environ[variable]):
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return call


if __name__ == "__main__":
    os.replace = replace_or_die
    if os.environ.get("RS_KILL_AFTER_APPENDS"):  # before the trainer's modules import `append_jsonl` by name
        from rs_trainer.run import io

        io.append_jsonl = die_on_the_nth_call("RS_KILL_AFTER_APPENDS", io.append_jsonl)
    if os.environ.get("RS_KILL_AFTER_STEPS"):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(die_on_the_nth_call("RS_KILL_AFTER_STEPS"))
    from rs_trainer.cli import main

    sys.exit(main(sys.argv[1:]))
