"""--tensorboard: a run's numbers as TensorBoard event files in its folder's tensorboard/, via tensorboardX.

    tensorboard --logdir runs        # every run under runs/, side by side

Each epoch's row of metrics.jsonl (losses, accuracies, seconds, images/s) is written at the row's step, under
``epoch/``, and the learning rate of every step under ``lr``. A resumed run drops the events it logged after
its last checkpoint (``purge_step``), as metrics.jsonl drops those rows, so no curve doubles back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import is_finite_number
from ..settings import UsageError


class TensorBoardLog:
    """An event-file writer for one run folder (rank 0's)."""

    def __init__(self, folder: Path, first_step: int) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UsageError("--tensorboard needs tensorboardX, which is not installed: "
                             "pip install 'npvit[tensorboard]' (or leave out --tensorboard)") from None
        self.writer = SummaryWriter(str(folder), purge_step=first_step if first_step > 0 else None)

    def step(self, step: int, lr: float) -> None:
        """The learning rate of the 0-based global ``step``."""
        self.writer.add_scalar("lr", lr, step)

    def epoch(self, row: dict[str, Any]) -> None:
        """An epoch's row of metrics.jsonl, at its step; written to disk at once."""
        for key, value in row.items():
            if key not in ("epoch", "step", "partial") and is_finite_number(value):
                self.writer.add_scalar(f"epoch/{key}", value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
