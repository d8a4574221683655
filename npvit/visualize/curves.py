"""Training curves from a run folder's ``metrics.jsonl``: loss, top-1, top-5 and the learning rate.

One point per logged epoch; train and validation where logged (runs with no validation split have train
only), and the test result from ``summary.json``, when the run has finished, marked at its best epoch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..files import is_finite_number
from .inputs import InputError
from .plotting import new_figure


def run_folder(path: str | Path) -> Path:
    """A run folder, also when given its metrics.jsonl or one of its checkpoints."""
    path = Path(path)
    return path.parent if path.is_file() else path


#: The numbers each row of metrics.jsonl may carry that the figure draws.
SERIES = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr")
#: With --ema, val_* are the moving average's numbers and these the raw weights' (absent otherwise).
RAW_SERIES = ("val_loss_raw", "val_top1_raw", "val_top5_raw")


def _number_or_none(value: Any) -> bool:
    """None, any float (NaN and infinity too: the figure leaves them out), or an int a float can hold."""
    return value is None or isinstance(value, float) or is_finite_number(value)


def read_run_metrics(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(one row per epoch, the last logged row of each epoch; summary.json or None).

    InputError, naming the line, for a file that is not what npvit.train writes. Numbers that are not
    finite (a diverged run) are kept: the figure leaves them out.
    """
    folder = run_folder(path)
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        raise InputError(f"no metrics.jsonl in {folder}: pass a run folder written by npvit.train")
    try:
        lines = metrics.read_text().splitlines()
        summary_path = folder / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"cannot read the metrics of {folder}: {exc}") from exc
    by_epoch = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise InputError(f"{metrics}, line {number}, is not JSON: the file is damaged") from None
        epoch = row.get("epoch") if isinstance(row, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1 or \
                not all(_number_or_none(row.get(key)) for key in SERIES + RAW_SERIES):
            raise InputError(f"{metrics}, line {number}, is not a row npvit.train writes (an epoch >= 1 and "
                             f"numbers for {', '.join(SERIES)})")
        by_epoch[epoch] = row
    if not by_epoch:
        raise InputError(f"{metrics} has no epochs logged yet")
    if summary is not None:
        test = summary.get("test") if isinstance(summary, dict) else None
        best = summary.get("best_epoch") if isinstance(summary, dict) else None
        if not isinstance(summary, dict) or not (test is None or isinstance(test, dict)) or \
                not all(_number_or_none(v) for v in (test or {}).values()) or \
                not (best is None or (isinstance(best, int) and not isinstance(best, bool))):
            raise InputError(f"{folder / 'summary.json'} is not what npvit.train writes: the file is damaged")
    return [by_epoch[e] for e in sorted(by_epoch)], summary


def _series(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    points = [(r["epoch"], r[key] * scale) for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def curves_figure(rows: list[dict[str, Any]], summary: dict[str, Any] | None = None, title: str = "") -> Any:
    """2x2 panels: loss, top-1 (%), top-5 (%), learning rate, against the epoch. A run with --ema shows its
    moving average's validation numbers and its raw weights' side by side."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    fig = new_figure(9.0, 6.4)
    axes = fig.subplots(2, 2)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.88, wspace=0.25, hspace=0.35)
    style = {"marker": "o", "markersize": 3, "linewidth": 1.4}
    ema = any(r.get("val_top1_raw") is not None for r in rows)
    val, raw = ("validation (EMA weights)", "validation (raw weights)") if ema else ("validation", "")
    panels = [
        (axes[0, 0], "loss", [("train", "train_loss", 1.0), (val, "val_loss", 1.0), (raw, "val_loss_raw", 1.0)], None),
        (axes[0, 1], "top-1 accuracy (%)", [("train", "train_top1", 100.0), (val, "val_top1", 100.0),
                                            (raw, "val_top1_raw", 100.0)], "top1"),
        (axes[1, 0], "top-5 accuracy (%)", [(val, "val_top5", 100.0), (raw, "val_top5_raw", 100.0)], "top5"),
        (axes[1, 1], "learning rate (at the epoch's end)", [("lr", "lr", 1.0)], None),
    ]
    test = (summary or {}).get("test") or {}
    best = (summary or {}).get("best_epoch")
    for ax, label, series, test_key in panels:
        for name, key, scale in series:
            xs, ys = _series(rows, key, scale)
            if xs:
                ax.plot(xs, ys, label=name, **style)
        if test_key and test.get(test_key) is not None and best is not None:
            ax.plot([best], [100.0 * test[test_key]], marker="*", markersize=11, linestyle="none",
                    color="crimson", label=f"test (best epoch {best}): {100 * test[test_key]:.2f}%")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0] and label != panels[-1][1]:
            ax.legend(fontsize=7)
    axes[1, 1].yaxis.set_major_formatter(FormatStrFormatter("%.1e"))
    fig.suptitle(title or "training curves", fontsize=10)
    return fig
