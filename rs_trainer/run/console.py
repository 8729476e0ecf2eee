"""A quiet console: a run's first screen is its own lines. Third-party libraries print notes at import or load time
that say nothing about the run; `quiet_console` turns off the ones this project causes, or sets what they ask for.
`RS_TRAINER_VERBOSE=1` keeps every one of them (and every library's own progress bar).

What it silences, each where it is caused:
- bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" at import (peft imports it on every
  run; the optional `kernels` package only speeds up 4-bit matmuls on the CPU): its module's logger goes to ERROR;
- DeepSpeed's "Setting accelerator to CPU ..." when Accelerate imports it: on a CPU launch (`ACCELERATE_USE_CPU`,
  set by `accelerate launch` with `use_cpu: true` and by the Makefile's torchrun demos) `DS_ACCELERATOR=cpu` says
  so beforehand, as DeepSpeed asks;
- transformers' "Loading weights" bar for each model: our own bars show each phase's progress.

`accelerate launch`'s note on `--num_cpu_threads_per_process` comes from the launcher, before this process starts:
the Makefile passes the flag for CPU configs (`LAUNCH_THREADS`).
"""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "RS_TRAINER_VERBOSE"
TRUE = ("1", "true", "yes")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in TRUE


def quiet_console() -> None:
    """Silence the third-party notes listed above, before the libraries that print them are imported; nothing when
    `RS_TRAINER_VERBOSE` is set."""
    if verbose():
        return
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in TRUE:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def quiet_loading_bars() -> None:
    """transformers' per-model "Loading weights" bar off (`RS_TRAINER_VERBOSE` keeps it). Called where transformers
    is imported anyway, so that `quiet_console` stays import-free."""
    if verbose():
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
