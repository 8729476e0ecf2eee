"""Progress bars (rate and ETA on the main process; plain lines when the output is not a terminal) and the round's
clock."""

from __future__ import annotations

import contextlib
import sys
import time

from tqdm.auto import tqdm


class RoundClock:
    """A round's timings: seconds per phase (`timing/<phase>` in the metrics) and when each phase began."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.started: dict[str, float] = {}  # wall-clock time, to compare with rows' `generated_at`
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        start, self.started[name] = time.perf_counter(), time.time()
        yield
        self.timings[name] = time.perf_counter() - start

    def elapsed(self) -> float:
        return time.perf_counter() - self._start


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True) -> tqdm:
    """A tqdm bar. Outside a terminal (CI logs, files) it prints a whole line every 15 s instead of
    carriage-return redraws."""
    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        mininterval=1.0 if tty else 15.0,
        dynamic_ncols=tty,
        ncols=None if tty else 100,
        file=sys.stderr if tty else _LineWriter(sys.stderr),
    )


class _LineWriter:
    """Turns tqdm's carriage-return redraws into whole lines, for logs that are not terminals. A line whose count
    has not moved since the last one written (tqdm redraws the finished bar once more when it closes) is left out.

    >>> import io
    >>> out = io.StringIO(); w = _LineWriter(out)
    >>> w.write("\\rsft: 100%|##| 2/2 [00:15<00:00, 7.76s/steps]")
    >>> w.write("\\rsft: 100%|##| 2/2 [00:15<00:00, 7.77s/steps]")  # the redraw at close
    >>> out.getvalue()
    'sft: 100%|##| 2/2 [00:15<00:00, 7.76s/steps]\\n'
    """

    def __init__(self, stream):
        self.stream = stream
        self.last = None

    def write(self, text: str) -> None:
        text = text.replace("\r", "\n").replace("\x1b[A", "")
        lines = []
        for line in (line for line in text.split("\n") if line.strip()):
            progress = line.split(" [", 1)[0]  # the description, bar and count, without the times and rates
            if progress != self.last:
                lines.append(line)
            self.last = progress
        if lines:
            self.stream.write("\n".join(lines) + "\n")

    def flush(self) -> None:
        self.stream.flush()
