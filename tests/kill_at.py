"""Run `python -m rs_trainer` and SIGKILL it at an exact point: the first `os.replace` whose target is named
`$RS_KILL_AT`. Every file and folder the trainer writes goes through `os.replace` (`write_atomic`, `atomic_dir`,
figures), so this stops a real run just before a given output appears, with nothing in the trainer changed.

    RS_KILL_AT=generations.jsonl python tests/kill_at.py --config ...
"""

import os
import signal
import sys
from pathlib import Path

_replace = os.replace


def replace_or_die(src, dst, *args, **kwargs):
    if Path(dst).name == os.environ.get("RS_KILL_AT"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)


if __name__ == "__main__":
    os.replace = replace_or_die
    from rs_trainer.cli import main

    sys.exit(main(sys.argv[1:]))
