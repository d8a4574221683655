"""What the training loop asks of the processes that train one model together, and the one-process answer.

Data-parallel training runs the same loop in every process (rank). Each takes its own disjoint slice of every
global batch (``rank_slice``), computes its gradients, and the ranks add them up (``allreduce_sum`` on the
model's gradient buffer) so that every rank applies the same AdamW update. Running sums (loss, correct
predictions) and the loop's decisions (stop, save) are agreed with ``allreduce_scalars``. With one process,
``SingleProcess`` does nothing and returns what it is given: the loop is the same code either way.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

Array = Any


@runtime_checkable
class Communicator(Protocol):
    """The collective operations the training loop uses. Every rank must call them in the same order."""

    rank: int  # this process, 0 .. size - 1; rank 0 alone writes files and prints
    size: int  # processes training the model

    def allreduce_sum(self, array: Array) -> None:
        """Replace ``array`` (a contiguous backend array, host or device) with its sum over all ranks, in place."""
        ...

    def allreduce_scalars(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum over all ranks of a few host numbers (float64)."""
        ...

    def barrier(self) -> None:
        """Return once every rank has called it."""
        ...


class SingleProcess:
    """The communicator of a run in one process: every collective is the identity."""

    rank = 0
    size = 1

    def allreduce_sum(self, array: Array) -> None:
        return None

    def allreduce_scalars(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]

    def barrier(self) -> None:
        return None


def rank_slice(batch: int, rank: int, size: int) -> slice:
    """The part of a global batch of ``batch`` images that ``rank`` of ``size`` takes: contiguous, disjoint,
    sizes differing by at most one (the first ``batch % size`` ranks take one more); empty when the batch
    has fewer images than there are ranks."""
    base, extra = divmod(batch, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))
