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
from typing import Any, NoReturn, Protocol, runtime_checkable

from .. import communicator as base


@runtime_checkable
class Communicator(base.Communicator, Protocol):
    """:class:`npvit.communicator.Communicator` (``rank``, ``size``, ``allreduce_sum``, ``allreduce_scalars``,
    ``barrier``: what the training step needs), and what starting and stopping a run of many processes needs.

    Attributes:
        local_rank, local_size: this process's index among the processes of its node, and their number
            (picks the GPU, shares the cores, orders downloads).
        name: what carries the messages, for the log (``"single process"``, ``"MPI (MPICH Version: 5.0.2)"``...).
    """

    local_rank: int
    local_size: int
    name: str

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``obj`` (a small JSON-able value) on every rank; other ranks' ``obj`` is ignored."""

    def abort(self, status: int = 1) -> NoReturn:
        """Stop every process of the run now with exit status ``status`` (after a rank failed alone)."""


def json_copy(obj: Any) -> Any:
    """``obj`` as it comes out of a broadcast: through JSON, so one process and N behave the same."""
    return json.loads(json.dumps(obj))


class SingleProcess(base.SingleProcess):
    """The communicator of a run on one process: the sums are the values themselves."""

    local_rank, local_size = 0, 1
    name = "single process"

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        if root != 0:
            raise ValueError(f"broadcast root {root} does not exist: there is one process (rank 0)")
        return json_copy(obj)

    def abort(self, status: int = 1) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(status)
