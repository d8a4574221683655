"""A one-line download progress bar on stderr: bytes done, percent, speed.

On a terminal the line redraws in place (at most ten times a second). When stderr is not a terminal (a log
file, CI) a redrawn line would fill the log with carriage returns, so a single line announces the download
instead; ``enabled=False`` prints nothing at all.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


class Progress:
    """Report progress of a transfer of ``total`` bytes (``None`` when the server did not say)."""

    def __init__(self, label: str, total: int | None, *, start: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, interval: float = 0.1) -> None:
        self.label, self.total, self.start = label, total, start
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.live = enabled and _isatty(self.stream)
        self.interval = interval
        self.t0 = self.last = time.monotonic()
        self.done = start
        if enabled and not self.live:
            size = f" ({_mb(total)} MB)" if total is not None else ""
            resumed = f", resuming at {_mb(start)} MB" if start else ""
            self._write(f"downloading {label}{size}{resumed}\n")

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self.live and now - self.last >= self.interval:
            self.last = now
            self._write("\r" + self.line())

    def close(self) -> None:
        if self.live:
            self._write("\r" + self.line() + "\n")

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        speed = f"{(self.done - self.start) / elapsed / 1e6:.1f} MB/s"
        if self.total:
            pct = 100.0 * self.done / self.total
            return f"{self.label}: {_mb(self.done)}/{_mb(self.total)} MB {pct:5.1f}% {speed}   "
        return f"{self.label}: {_mb(self.done)} MB {speed}   "

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
