"""Shared helpers for the benchmark scripts: peak-RSS sampling and table printing."""

from __future__ import annotations

import os
import threading
import time


class PeakRSS:
    """Samples this process's resident memory every 10 ms; `peak - start` is the extra memory of the block."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.peak = self.start = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2**20

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    cells = [cols] + [[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
