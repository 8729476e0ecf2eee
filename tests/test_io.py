"""Atomic folder swaps: a SIGKILL at either rename, or an error while writing, never leaves the target without a
complete folder, old or new."""

import os
import signal
import subprocess
import sys

import pytest
from helpers import REPO

from rs_trainer.run.io import atomic_dir, is_disk_full, recover_dir

SWAP = """
import os, signal, sys
from pathlib import Path
from rs_trainer.run.io import atomic_dir
kill_at = sys.argv[2]
real_replace = os.replace
def replace(src, dst):
    if Path(dst).name == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = replace
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "weights").write_text("new")
"""


@pytest.mark.parametrize("kill_at", [".ckpt.old", "ckpt"])
def test_kill_at_either_rename_keeps_a_complete_folder(tmp_path, kill_at):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "weights").write_text("old")
    proc = subprocess.run(
        [sys.executable, "-c", SWAP, str(target), kill_at], env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL
    if kill_at == "ckpt":  # between the renames: the old folder is aside, the new one not yet in place
        assert not target.exists() and (tmp_path / ".ckpt.old" / "weights").read_text() == "old"
    recover_dir(target)
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_swap_replaces_and_an_error_leaves_the_old_folder(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("one")
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("two")
    assert (target / "weights").read_text() == "two"
    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise OSError(28, "No space left on device")
    assert (target / "weights").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_swap_whose_last_delete_was_cut_keeps_the_new_folder(tmp_path):
    target, aside = tmp_path / "ckpt", tmp_path / ".ckpt.old"
    for folder, text in ((target, "new"), (aside, "old")):
        folder.mkdir()
        (folder / "weights").write_text(text)
    recover_dir(target)
    assert (target / "weights").read_text() == "new" and not aside.exists()


def test_disk_full_is_recognised_through_wrappers():
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(RuntimeError("Error while serializing: I/O error: File too large (os error 27)"))
    try:
        try:
            raise OSError(122, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(2, "No such file or directory"))
    assert not is_disk_full(ValueError("bad value 28"))


def test_rows_appended_after_a_torn_line_are_all_read(tmp_path):
    """A kill or a full disk mid-append leaves half a line; the next append cuts it, so no later row is lost."""
    from rs_trainer.run.io import append_jsonl, read_jsonl_prefix

    shard = tmp_path / "generations.rank0.jsonl"
    append_jsonl(shard, [{"i": 0}, {"i": 1}])
    with open(shard, "a") as f:
        f.write('{"i": 2, "completion": "hal')  # torn
    append_jsonl(shard, [{"i": 3}])
    assert [r["i"] for r in read_jsonl_prefix(shard)] == [0, 1, 3]
