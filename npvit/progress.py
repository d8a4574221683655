"""A dependency-free progress bar for long loops: one redrawn line on a terminal, silence otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """12 -> '0:12', 3725 -> '1:02:05'."""
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """``bar.update(done, **stats)`` redraws ``label [#####-----] done/total  k=v ... ETA``.

    Drawn only when ``stream`` is a terminal (or ``enabled=True``), so logs and CI output stay clean.
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, enabled: bool | None = None,
                 width: int = 24) -> None:
        self.total, self.label, self.width = max(1, total), label, width
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.perf_counter()
        self._last_len = 0

    def update(self, done: int, **stats: str | float) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        frac = min(1.0, done / self.total)
        filled = int(frac * self.width)
        eta = elapsed / done * (self.total - done) if done else 0.0
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()]
        line = (f"{self.label} [{'#' * filled}{'-' * (self.width - filled)}] {done}/{self.total}  "
                + "  ".join(parts) + f"  ETA {format_seconds(eta)}")
        self.stream.write("\r" + line + " " * max(0, self._last_len - len(line)))
        self.stream.flush()
        self._last_len = len(line)

    def close(self) -> None:
        """Clear the bar's line so the next print starts clean."""
        if self.enabled and self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self.stream.flush()
            self._last_len = 0
