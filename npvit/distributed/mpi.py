"""The MPI communicator, on mpi4py: what CPU clusters use, and the host side of GPU runs.

Importing this module imports mpi4py, which starts MPI; :func:`npvit.distributed.connect` does so only when a
launcher started several processes.

Gradient buffers are summed in place by one ``MPI_Allreduce`` with ``MPI_IN_PLACE``: on NumPy arrays
directly; on CuPy arrays either directly, where the MPI library is CUDA-aware (it then reads and writes GPU
memory itself), or through a host copy otherwise (slower, always correct). The MPI library says which through
the MPI 4.1 info key ``mpi_memory_alloc_kinds`` (``cuda`` among the kinds it lists).

Every collective is started non-blocking and waited for by ``wait``: MPI_Test in a loop, at full speed for the
first ``SPIN_SECONDS`` (a step's sum, where the ranks arrive together), then sleeping between tests, longer
and longer up to ``SLEEP_MAX`` (a rank waiting for a frozen or slow peer costs almost no CPU). A blocking
MPI call would hold the main thread inside C, where Python runs no signal handler: between tests it runs
them, so Ctrl-C or SIGTERM reaches a rank however long it waits, and a second one stops the job at once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, NoReturn, Sequence

import numpy

from mpi4py import MPI

from ..backend import get_array_module
from .watchdog import Watchdog

SPIN_SECONDS = 0.05  # test at full speed this long: a step's sum, where the ranks arrive together
SLEEP_MIN, SLEEP_MAX = 1e-4, 0.02  # then sleep between tests, doubling from SLEEP_MIN to SLEEP_MAX


def wait(request: Any) -> None:
    """Wait for a non-blocking MPI operation, running signal handlers meanwhile and sleeping once it lasts."""
    start = time.monotonic()
    while not request.Test():
        if time.monotonic() - start > SPIN_SECONDS:
            break
    delay = SLEEP_MIN
    while not request.Test():
        time.sleep(delay)  # signal handlers run here; what they raise ends the wait (and then the job)
        delay = min(2 * delay, SLEEP_MAX)


def library_name() -> str:
    """The MPI library in a few words, e.g. ``MPICH Version: 5.0.2`` or ``Open MPI v5.0.3``."""
    first = MPI.Get_library_version().strip().splitlines()[0]
    return " ".join(first.split(",")[0].split())


def cuda_aware(comm: Any = None) -> bool:
    """Whether this MPI reads and writes CUDA device memory itself (reported through the MPI 4.1 memory
    allocation kinds; an MPI too old to report them counts as not CUDA-aware)."""
    comm = MPI.COMM_WORLD if comm is None else comm
    try:
        kinds = comm.Get_info().Get("mpi_memory_alloc_kinds") or ""
    except MPI.Exception:
        return False
    return any(kind.split(":")[0].strip() == "cuda" for kind in kinds.split(","))


class MPICommunicator:
    """A :class:`~npvit.distributed.Communicator` over ``MPI.COMM_WORLD`` (or ``comm``).

    Args:
        comm: the mpi4py communicator (default ``MPI.COMM_WORLD``).
        timeout: seconds a collective may wait for the other ranks before this process gives up (see
            :mod:`npvit.distributed.watchdog`); 0 or None for no limit.
        device_buffers: how CuPy arrays are summed: ``"cuda-aware"`` (MPI reads GPU memory) or ``"host"``
            (copied to the host and back). Ignored for NumPy arrays.
    """

    def __init__(self, comm: Any = None, timeout: float | None = None, device_buffers: str = "host") -> None:
        if device_buffers not in ("host", "cuda-aware"):
            raise ValueError(f"device_buffers must be 'host' or 'cuda-aware', got {device_buffers!r}")
        self._comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks that share this node's memory
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.device_buffers = device_buffers
        self.name = f"MPI ({library_name()})"
        self._watchdog = Watchdog(timeout, self.rank, self.size) if timeout else None
        self._unlimited = False

    def _guard(self, what: str) -> Any:
        if self._watchdog is None or self._unlimited:
            return nullcontext()
        return self._watchdog.guard(what)

    @contextmanager
    def without_time_limit(self) -> Iterator[None]:
        """Collectives inside wait as long as it takes: for waits of unknown length, such as a download."""
        self._unlimited = True
        try:
            yield
        finally:
            self._unlimited = False

    def allreduce_sum(self, array: Any) -> None:
        xp = get_array_module(array)
        if not array.flags.c_contiguous:
            raise ValueError("allreduce_sum sums one contiguous array (the flat gradient buffer); got a "
                             f"non-contiguous array of shape {array.shape}")
        if xp is numpy:
            with self._guard("the gradient sum (MPI_Allreduce)"):
                wait(self._comm.Iallreduce(MPI.IN_PLACE, array, op=MPI.SUM))
            return
        if self.device_buffers == "cuda-aware":
            # MPI knows nothing of CUDA streams: the kernels that wrote the gradients must have finished.
            xp.cuda.get_current_stream().synchronize()
            with self._guard("the gradient sum (MPI_Allreduce on GPU memory)"):
                wait(self._comm.Iallreduce(MPI.IN_PLACE, array, op=MPI.SUM))
            return
        host = xp.asnumpy(array)  # waits for the stream, then copies
        with self._guard("the gradient sum (MPI_Allreduce)"):
            wait(self._comm.Iallreduce(MPI.IN_PLACE, host, op=MPI.SUM))
        array.set(host)

    def allreduce_scalars(self, values: Sequence[float]) -> list[float]:
        buffer = numpy.array([float(v) for v in values], dtype=numpy.float64)
        with self._guard("the sum of the step's numbers (MPI_Allreduce)"):
            wait(self._comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM))
        return buffer.tolist()

    def barrier(self) -> None:
        with self._guard("a barrier (MPI_Barrier)"):
            wait(self._comm.Ibarrier())

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        # JSON, not mpi4py's pickle-based bcast: nothing received is ever unpickled.
        data = json.dumps(obj).encode() if self.rank == root else b""
        length = numpy.array([len(data)], dtype=numpy.int64)
        with self._guard("a broadcast (MPI_Bcast)"):
            wait(self._comm.Ibcast(length, root=root))
            buffer = numpy.frombuffer(data, dtype=numpy.uint8).copy() if self.rank == root else \
                numpy.empty(int(length[0]), dtype=numpy.uint8)
            wait(self._comm.Ibcast(buffer, root=root))
        return json.loads(buffer.tobytes().decode())

    def abort(self, status: int = 1) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        # MPI_Abort has the launcher end every process at once, the forwarders of their output included: a
        # moment first, so that the message just printed reaches the terminal (under load it was lost).
        time.sleep(0.3)
        self._comm.Abort(status)
        # MPICH's MPI_Abort may return once it has told mpiexec, which then ends every process: end this one
        # now, without Python's exit handlers (mpi4py's would call MPI_Finalize and wait for the others).
        os._exit(status)
