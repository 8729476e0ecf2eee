"""Atomic writes: every output file is written to a temporary file in the same folder, flushed, synced and
renamed into place, and every output folder (a checkpoint) is built beside its target and swapped in, so a crash
or a full disk never leaves a half-written file or folder under the final name, nor removes the previous one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

# A full disk (ENOSPC), a file-size limit (EFBIG) or a quota (EDQUOT), as Python's OSError or as the text of a
# Rust I/O error that safetensors and tokenizers raise ("os error 28", "Os { code: 28, ...").
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_DISK_FULL_TEXT = re.compile(r"(os error|code:) (28|27|122)\b")  # ENOSPC, EFBIG, EDQUOT on Linux


def is_disk_full(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, is a write that failed for lack of space."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            return True
        if _DISK_FULL_TEXT.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def write_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | Path, rows) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def append_jsonl(path: str | Path, rows) -> None:
    """Append rows and make them durable (flush + fsync) before returning: a kill loses at most the batch being
    written, whose torn last line `read_jsonl_prefix` drops."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a line that a kill or a full disk left half-written, so the next rows do not glue onto it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = f.seek(0) or f.read()
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_prefix(path: str | Path) -> list[dict]:
    """The complete rows of an append-only file; a torn last line (a kill mid-write) is ignored."""
    rows = []
    if not Path(path).exists():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _tmp_dir(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def recover_dir(path: str | Path) -> None:
    """Finish or undo a folder swap that a kill interrupted (see `atomic_dir`), and drop a half-built folder."""
    path = Path(path)
    aside = _aside(path)
    if aside.exists():
        if path.exists():
            shutil.rmtree(aside)  # the new folder is in place; only deleting the old one was cut short
        else:
            os.replace(aside, path)  # killed between the two renames: the old folder is whole, put it back
    shutil.rmtree(_tmp_dir(path), ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield an empty folder beside `path` to write into; when the block ends without error, swap it in.

    The swap renames the old `path` aside, renames the new folder in, then deletes the old one, so at every instant
    a complete folder, old or new, is at `path` or at its aside name, from where `recover_dir` restores it. If the
    block raises (a full disk, say), the new folder is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = _tmp_dir(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        os.replace(path, _aside(path))
    os.replace(tmp, path)
    shutil.rmtree(_aside(path), ignore_errors=True)
