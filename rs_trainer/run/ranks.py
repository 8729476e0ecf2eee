"""What several processes need from one another: the main process acting for all of them (`on_main`), rows
gathered on the main process only (`gather_to_main`), the log and progress bars drawn by it, the process group's
timeout, a shared `output_dir`, and each rank's own device for the models it scores with."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from rs_trainer.errors import ConfigError, first_line
from rs_trainer.run.progress import progress_bar


def on_main(accelerator, action: Callable[[], object], error_type: type[Exception]):
    """Run `action` on the main process only and return its result on every rank. When it raises `error_type`,
    every rank raises it, so no rank waits for a collective that the others never reach."""
    from accelerate.utils import broadcast_object_list

    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = action()
        except error_type as err:
            error = str(err)
    result, error = broadcast_object_list([result, error])
    if error:
        raise error_type(error)
    return result


def make_accelerator(args):
    """The run's `Accelerator`, with the process group's timeout set to `args.ddp_timeout` seconds.

    Without it torch's defaults hold (10 minutes on NCCL), shorter than waits the loop creates: ranks that finished
    generating wait for the slowest one, and every rank waits while rank 0 writes the served model, starts a server
    or writes a full checkpoint. Only the first process group of a process takes it (Accelerate creates it here)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    handler = InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))
    return Accelerator(log_with=args.trackers(), project_dir=args.output_dir, kwargs_handlers=[handler])


def check_shared_storage(accelerator, output_dir: Path) -> None:
    """Refuse a run whose ranks do not all see the same `output_dir`.

    Every rank decides what to do from the files in `output_dir` (finished rounds, scored rows, shards, the probe,
    checkpoints). On nodes without shared storage they would take different branches and hang, and resume would fail
    on every node but rank 0's. Rank 0 writes a fresh nonce; after a barrier every rank must read it back."""
    from accelerate.utils import broadcast_object_list, gather_object

    if accelerator.num_processes == 1:
        return
    path = output_dir / ".shared_storage_check"
    nonce = None
    created = False
    if accelerator.is_main_process:
        nonce = secrets.token_hex(16)
        created = not output_dir.exists()
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(nonce)
    nonce = broadcast_object_list([nonce])[0]
    accelerator.wait_for_everyone()
    try:
        seen = path.read_text() == nonce
    except OSError:
        seen = False
    blind = [rank for rank, ok in enumerate(gather_object([seen])) if not ok]
    if accelerator.is_main_process:
        path.unlink(missing_ok=True)
        if created:  # nothing is written before every check has passed
            output_dir.rmdir()
    accelerator.wait_for_everyone()  # no rank looks at `output_dir` while rank 0 is still removing the check
    if blind:
        raise ConfigError(
            f"`output_dir` {output_dir} is not shared: rank(s) {blind} cannot read what rank 0 wrote there. Every "
            "rank reads the run's state from it, so put `output_dir` on storage that every node mounts at the same "
            "path (NFS, Lustre, a shared volume)."
        )


# What gloo says when the other side of a collective is gone or late (a plain RuntimeError); torch wraps NCCL's and
# the store's in `DistError` subclasses. A gloo collective mismatch (a bug) matches none and keeps its traceback.
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting", "Broken pipe")


def lost_peer(err: BaseException) -> str | None:
    """A one-line explanation when `err` is a collective that failed because another process of the run died or
    stalled past `ddp_timeout`; None for anything else (a bug keeps its traceback).

    >>> lost_peer(RuntimeError("something else")) is None
    True
    """
    import torch.distributed as dist

    if not (isinstance(err, RuntimeError) and dist.is_available() and dist.is_initialized()):
        return None
    message = re.sub(r"^\[[^\]]*\]\s*", "", first_line(err))  # gloo's "[.../pair.cc:553] " source prefix
    if not (isinstance(err, dist.DistError) or any(marker in message for marker in _PEER_LOST)):
        return None
    rank = dist.get_rank()
    return (
        f"rank {rank} lost contact with another process of the run ({message[:160]}): a process or a whole node "
        "died, or stalled longer than `ddp_timeout`. The files written before are intact: once every node is back, "
        "rerun the same command on every node to resume."
    )


def local_device(value: str | None, num_processes: int, default) -> str:
    """The device of this rank's reward model: `value` from `reward_model_device`, or `default` (this process's).

    `cpu`, or `cuda` without an index (this rank's GPU), works with any number of processes. An indexed device
    such as `cuda:1` puts one reward model on GPU 1 per process, so it is refused when several processes run.

    >>> local_device(None, 8, "cuda:3"), local_device("cuda", 8, "cuda:3"), local_device("cuda:1", 1, "cuda:0")
    ('cuda:3', 'cuda:3', 'cuda:1')
    """
    if value is None or value == "cuda":
        return str(default)
    if num_processes > 1 and ":" in value:
        raise ConfigError(
            f"`reward_model_device` {value} would put every one of the {num_processes} processes' reward models on "
            "that one device; leave it unset (or `cuda`) for each rank's own GPU, or set `cpu`."
        )
    return value


def gather_to_main(rows: list, accelerator) -> list | None:
    """Every rank's `rows` concatenated on the main process (None elsewhere): unlike `gather_object`, the other
    ranks never hold the whole round's text."""
    if accelerator.num_processes == 1:
        return list(rows)
    import torch.distributed as dist

    parts = [None] * accelerator.num_processes if accelerator.is_main_process else None
    dist.gather_object(rows, parts, dst=0)
    return [row for part in parts for row in part] if accelerator.is_main_process else None


def log(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        from tqdm.auto import tqdm

        tqdm.write(message)


def progress(accelerator, total: int, desc: str, unit: str):
    return progress_bar(total, desc, unit, enabled=accelerator.is_main_process)
