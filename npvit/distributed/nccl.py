"""Gradients summed between GPUs by NCCL, through CuPy's binding ``cupy.cuda.nccl``; MPI for everything else.

One process drives one GPU. NCCL sums GPU memory over NVLink, PCIe or InfiniBand with no trip through the
host, and its call is queued on the current CUDA stream, after the backward kernels that wrote the gradients
and before the optimizer's: the host never waits for it. MPI starts it (bootstrap): rank 0 asks NCCL for a
unique id (128 bytes), MPI broadcasts it, and every rank joins the NCCL communicator with that id, its rank
and the number of ranks. The few host numbers of a step (loss sum, counts), broadcasts and barriers stay on
MPI.

Which GPU: the rank's index among the processes of its node (``local_rank``, from MPI's shared-memory split)
picks one of the GPUs it can see; where the launcher gives each process its own single GPU (Slurm's
``--gpus-per-task=1`` sets ``CUDA_VISIBLE_DEVICES`` per task), that one.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NoReturn, Sequence

from ..backend import BackendUnavailableError
from .communicator import Communicator
from .errors import DistributedError

# NumPy dtype name -> name of NCCL's datatype constant in cupy.cuda.nccl
NCCL_DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}


def load_nccl() -> ModuleType | None:
    """CuPy's NCCL module, or None where CuPy was built or installed without NCCL."""
    try:
        from cupy.cuda import nccl
    except ImportError:
        return None
    return nccl if getattr(nccl, "available", False) else None


def select_device(local_rank: int, local_size: int, cupy: ModuleType) -> int:
    """Make GPU ``local_rank`` this process's current device, before anything is allocated; return its index.

    With one visible GPU, that one (the launcher bound one GPU to each process). With several, the node's
    processes take one each, so there must be at least as many GPUs as processes on the node.
    """
    count = cupy.cuda.runtime.getDeviceCount()
    if count == 0:
        raise BackendUnavailableError("no CUDA device is visible to this process; use --backend numpy")
    if count == 1:
        device = 0
    elif local_size <= count:
        device = local_rank
    else:
        raise DistributedError(
            f"{local_size} processes run on this node but it has {count} GPUs: start at most one process per "
            f"GPU (mpiexec -n {count} per node), or give each process its own GPU through CUDA_VISIBLE_DEVICES")
    cupy.cuda.Device(device).use()
    return device


def encode_unique_id(unique_id: bytes | tuple[int, ...] | None) -> Any:
    """NCCL's unique id as JSON (the host broadcast carries JSON): bytes (CuPy 14's ``get_unique_id()``) as a
    hex string, the tuple of signed bytes older CuPy returned as a list."""
    if unique_id is None:
        return None
    return unique_id.hex() if isinstance(unique_id, bytes) else list(unique_id)


def decode_unique_id(payload: Any) -> bytes | tuple[int, ...]:
    """The id back in exactly the type ``get_unique_id()`` gave rank 0, the type ``NcclCommunicator`` takes:
    CuPy 14 wants ``bytes`` and raises TypeError on a tuple."""
    return bytes.fromhex(payload) if isinstance(payload, str) else tuple(payload)


class NCCLCommunicator:
    """A :class:`~npvit.distributed.Communicator` that sums CuPy buffers with NCCL and does the rest on ``host``.

    Args:
        host: the MPI communicator of the same processes (bootstrap, scalars, broadcasts, barriers, abort).
        nccl: ``cupy.cuda.nccl``.
        cupy: the ``cupy`` module (for the current stream).
    """

    def __init__(self, host: Communicator, nccl: ModuleType, cupy: ModuleType) -> None:
        self._host, self._nccl, self._cupy = host, nccl, cupy
        self.rank, self.size = host.rank, host.size
        self.local_rank, self.local_size = host.local_rank, host.local_size
        self._dtypes = {name: getattr(nccl, constant) for name, constant in NCCL_DTYPES.items()}
        unique_id = nccl.get_unique_id() if host.rank == 0 else None
        unique_id = decode_unique_id(host.broadcast(encode_unique_id(unique_id)))
        self._comm = nccl.NcclCommunicator(host.size, unique_id, host.rank)
        version = nccl.get_version() if hasattr(nccl, "get_version") else 0
        self.name = f"NCCL {version // 10000}.{version // 100 % 100}.{version % 100} and {host.name}" \
            if version >= 10000 else f"NCCL and {host.name}"

    def allreduce_sum(self, array: Any) -> None:
        if not array.flags.c_contiguous:
            raise ValueError("allreduce_sum sums one contiguous array (the flat gradient buffer); got a "
                             f"non-contiguous array of shape {array.shape}")
        datatype = self._dtypes.get(str(array.dtype))
        if datatype is None:
            raise TypeError(f"NCCL sums {', '.join(NCCL_DTYPES)} arrays here, not {array.dtype}")
        stream = self._cupy.cuda.get_current_stream()
        # In place: the same pointer as source and destination, which NCCL allows.
        self._comm.allReduce(array.data.ptr, array.data.ptr, array.size, datatype, self._nccl.NCCL_SUM, stream.ptr)

    def allreduce_scalars(self, values: Sequence[float]) -> list[float]:
        return self._host.allreduce_scalars(values)

    def barrier(self) -> None:
        self._host.barrier()

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        return self._host.broadcast(obj, root)

    def abort(self, status: int = 1) -> NoReturn:
        try:
            self._comm.abort()  # frees kernels waiting for a peer that will never come
        except Exception:  # the MPI abort below ends the process either way
            pass
        self._host.abort(status)
