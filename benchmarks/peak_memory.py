"""Run a command and report the peak memory of its whole process tree, and which processes held it.

    python benchmarks/peak_memory.py [--interval 0.5] [--out peak.json] -- make test

Every `--interval` seconds it sums the proportional set size (PSS: shared pages split between the processes that
map them, so a tree's sum is what it really occupies) of the command and all its descendants, and keeps the
moment that sum peaked with the largest processes at that moment, plus each process's own peak RSS. Only the
command's tree is counted, not whatever else runs on the machine. Linux only (PSS comes from /proc/<pid>/smaps_rollup).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import psutil

GIB = 1024**3


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def sample(procs: list[psutil.Process]) -> list[tuple[int, str, int, int]]:
    """(pid, command line, pss, rss) of each process still alive."""
    out = []
    for p in procs:
        try:
            info = p.memory_full_info()
            cmd = " ".join(p.cmdline())[:160]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        out.append((p.pid, cmd, info.pss, info.rss))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--out", default=None, help="write the peak and the per-process peaks as JSON here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after `--`")

    start = time.monotonic()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak_total, peak_at, peak_procs, machine_peak = 0, 0.0, [], 0
    own_peak: dict[tuple[int, str], int] = {}
    while child.poll() is None:
        rows = sample(tree(root))
        total = sum(r[2] for r in rows)
        machine_peak = max(machine_peak, psutil.virtual_memory().total - psutil.virtual_memory().available)
        for pid, cmd, _, rss in rows:
            own_peak[(pid, cmd)] = max(own_peak.get((pid, cmd), 0), rss)
        if total > peak_total:
            peak_total, peak_at = total, time.monotonic() - start
            peak_procs = sorted(rows, key=lambda r: -r[2])[:6]
        time.sleep(args.interval)
    elapsed = time.monotonic() - start

    print(f"\npeak_memory: exit {child.returncode} after {elapsed:.0f} s", file=sys.stderr)
    print(f"peak_memory: tree peak {peak_total / GIB:.2f} GiB (PSS) at {peak_at:.0f} s; ", end="", file=sys.stderr)
    print(
        f"machine in use at most {machine_peak / GIB:.2f} GiB (everything running, not only this tree)",
        file=sys.stderr,
    )
    for pid, cmd, pss, _ in peak_procs:
        print(f"  {pss / GIB:6.2f} GiB  pid {pid}  {cmd}", file=sys.stderr)
    largest = sorted(own_peak.items(), key=lambda kv: -kv[1])[:8]
    print("peak_memory: largest single processes (own peak RSS):", file=sys.stderr)
    for (pid, cmd), rss in largest:
        print(f"  {rss / GIB:6.2f} GiB  pid {pid}  {cmd}", file=sys.stderr)
    if args.out:
        result = {
            "command": command,
            "exit": child.returncode,
            "seconds": round(elapsed),
            "tree_peak_gib": round(peak_total / GIB, 2),
            "tree_peak_at_s": round(peak_at),
            "machine_peak_gib": round(machine_peak / GIB, 2),
            "at_peak": [{"pid": p, "cmd": c, "pss_gib": round(s / GIB, 2)} for p, c, s, _ in peak_procs],
            "largest": [{"pid": p, "cmd": c, "rss_gib": round(r / GIB, 2)} for (p, c), r in largest],
        }
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, args.out)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
