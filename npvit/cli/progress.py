"""The package's one progress bar (training epochs, evaluation, downloads), drawn by tqdm.

    bar = ProgressBar(total, "epoch 1/10")            # drawn only when stderr is a terminal
    bar.update(done, loss=0.71, acc="75.0%")          # ``done`` counts from the start, not an increment
    bar.close()

A bar is drawn only on a terminal unless ``enabled=True`` forces it (``enabled=False`` silences it), so
logs and CI output never fill with carriage returns. ``update`` takes the position reached, which suits
loops that resume part-way (a resumed epoch, a resumed download: ``start=``).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm


class _Tqdm(tqdm):
    monitor_interval = 0  # no monitor thread: the bars are redrawn by update() alone


def format_seconds(seconds: float) -> str:
    """12 -> '0:12', 3725 -> '1:02:05'."""
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressBar:
    """``desc [####------] done/total [elapsed<ETA, rate, k=v ...]`` on ``stream`` (default stderr).

    Args:
        total: steps (or bytes) in all; ``None`` when unknown (a server that sends no length).
        desc: the label in front of the bar.
        enabled: ``None`` draws only when ``stream`` is a terminal, ``True`` always, ``False`` never.
        start: the position the bar starts at (a resumed loop or download).
        unit: what is counted ("step", "batch", "B"); ``scale=True`` writes large counts as k/M/G (bytes).
        leave: keep the final bar on screen when closed (downloads) instead of clearing its line.
    """

    def __init__(self, total: int | None, desc: str = "", *, enabled: bool | None = None,
                 stream: TextIO | None = None, start: int = 0, unit: str = "step", scale: bool = False,
                 leave: bool = False) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.live = is_terminal(self.stream) if enabled is None else bool(enabled)
        self._bar = _Tqdm(total=total, desc=desc, initial=start, file=self.stream, disable=not self.live,
                          leave=leave, unit=unit, unit_scale=scale, unit_divisor=1000, dynamic_ncols=True,
                          mininterval=0.1)
        self._done = start

    def update(self, done: int, **postfix: Any) -> None:
        """Move the bar to ``done`` and show ``postfix`` after it (floats to 4 significant digits)."""
        if not self.live:
            return
        if postfix:
            self._bar.set_postfix_str("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in postfix.items()), refresh=False)
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        """Finish the bar: cleared from the screen, or kept (``leave=True``), so the next line starts clean."""
        self._bar.close()
