"""The communicator: the few collective operations data-parallel training needs, and the single process.

Data parallelism keeps one copy of the model on each of N processes (ranks). Each rank runs the forward and
backward pass on its slice of the global batch; then the ranks add their gradients,

    g = sum over ranks r of g_r          (every rank ends with the same g)

and every rank takes the same optimizer step, so the copies stay equal without ever being sent. That sum over
one flat, contiguous gradient buffer is ``allreduce_sum``; the step's loss sum, correct count and image count
go together in one small ``allreduce_scalars``. The implementations:

    SingleProcess        one process: every operation is a no-op (the default; never imports mpi4py)
    MPICommunicator      mpi4py (``npvit.distributed.mpi``): CPU buffers, or GPU buffers through the host or
                         a CUDA-aware MPI
    NCCLCommunicator     NCCL through CuPy for GPU buffers (``npvit.distributed.nccl``), MPI for the rest
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn, Protocol, Sequence, runtime_checkable

Array = Any


@runtime_checkable
class Communicator(Protocol):
    """The collective operations of a run; every rank must call them in the same order.

    What a training step needs: ``rank``, ``size``, ``allreduce_sum``, ``allreduce_scalars``, ``barrier``.
    What starting and stopping a run of many processes needs besides: ``local_rank`` and ``local_size`` (this
    process's index among the processes of its node, and their number: they pick the GPU, share the cores,
    order downloads), ``name`` (what carries the messages, for the log), ``broadcast`` and ``abort``.
    """

    rank: int  # this process, 0 .. size - 1; rank 0 alone writes files and prints
    size: int  # processes training the model
    local_rank: int
    local_size: int
    name: str

    def allreduce_sum(self, array: Array) -> None:
        """Replace ``array`` (a contiguous backend array, host or device) with its sum over all ranks, in place."""

    def allreduce_scalars(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum over all ranks of a few host numbers (float64)."""

    def barrier(self) -> None:
        """Return once every rank has called it."""

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``obj`` (a small JSON-able value) on every rank; other ranks' ``obj`` is ignored."""

    def abort(self, status: int = 1) -> NoReturn:
        """Stop every process of the run now with exit status ``status`` (after a rank failed alone)."""


def json_copy(obj: Any) -> Any:
    """``obj`` as it comes out of a broadcast: through JSON, so one process and N behave the same."""
    return json.loads(json.dumps(obj))


class SingleProcess:
    """The communicator of a run on one process: every collective is the identity."""

    rank, size = 0, 1
    local_rank, local_size = 0, 1
    name = "single process"

    def allreduce_sum(self, array: Array) -> None:
        return None

    def allreduce_scalars(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]

    def barrier(self) -> None:
        return None

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        if root != 0:
            raise ValueError(f"broadcast root {root} does not exist: there is one process (rank 0)")
        return json_copy(obj)

    def abort(self, status: int = 1) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(status)
