"""What the trainer's collaborators share about ranks: rows gathered on the main process only, and the log and
progress bars, drawn by the main process. (The main process acting for all, `on_main`, is in `rs_trainer.run.ranks`,
where the generators use it.)"""

from __future__ import annotations

from tqdm.auto import tqdm

from rs_trainer.run.progress import progress_bar


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
