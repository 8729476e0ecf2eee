"""What the trainer's collaborators share about ranks: the main process acting for all of them (its error raised
on every rank), rows gathered on the main process only, and the log and progress bars, drawn by the main process."""

from __future__ import annotations

from collections.abc import Callable

from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from rs_trainer.run.progress import progress_bar


def on_main(accelerator, action: Callable[[], object], error_type: type[Exception]):
    """Run `action` on the main process only and return its result on every rank. When it raises `error_type`,
    every rank raises it, so no rank waits for a collective that the others never reach."""
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
        tqdm.write(message)


def progress(accelerator, total: int, desc: str, unit: str):
    return progress_bar(total, desc, unit, enabled=accelerator.is_main_process)
