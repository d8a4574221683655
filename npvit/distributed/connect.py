"""Building the communicator at startup: alone unless a launcher says otherwise, then MPI, then the GPU.

    comm = connect()                    # SingleProcess, or MPI when started by mpiexec / srun
    comm = for_backend(comm, "cupy")    # on GPUs: pick this rank's GPU, sum gradients with NCCL

A process with no launcher variables (or started as one process) gets :class:`SingleProcess` and never
imports mpi4py, so a plain ``python -m npvit.train`` runs as it always did, with or without mpi4py installed.
"""

from __future__ import annotations

from types import ModuleType
from typing import Mapping

from ..cli.status import BAD_INPUT
from .communicator import Communicator, SingleProcess
from .errors import DistributedError, MPIUnavailableError
from .faults import fail
from .launch import detect_launch
from .nccl import NCCLCommunicator, load_nccl, select_device
from .watchdog import timeout_from_environment

INSTALL_HINT = ("install it with pip install -e '.[mpi]' in an npvit checkout (or pip install 'npvit[mpi]'); on a "
                "cluster, build it against the cluster's own MPI instead (docs/distributed.md, \"A Slurm cluster, "
                "with the cluster's own MPI\")")


def connect(environ: Mapping[str, str] | None = None, timeout: float | None = None) -> Communicator:
    """The communicator of this process: :class:`SingleProcess` alone, :class:`MPICommunicator` under a launcher.

    Args:
        environ: where to read the launcher's variables (default ``os.environ``).
        timeout: the collective watchdog's limit in seconds (default ``$NPVIT_COLLECTIVE_TIMEOUT`` or 600; 0
            for none).

    Raises:
        MPIUnavailableError: started as several processes, but mpi4py is missing or cannot load its MPI.
        DistributedError: the launcher and MPI disagree on the number of processes.

    A bad ``$NPVIT_COLLECTIVE_TIMEOUT`` is found once MPI is up: the whole job stops (status 2), naming the rank.
    """
    launch = detect_launch(environ)
    if launch is None or launch.size == 1:
        return SingleProcess()
    where = f"this is process {launch.rank} of {launch.size} started by {launch.launcher}"
    try:
        from .mpi import MPICommunicator
    except ImportError as exc:
        raise MPIUnavailableError(f"{where}, but mpi4py is not installed ({exc}); {INSTALL_HINT}") from exc
    except RuntimeError as exc:  # mpi4py is there but cannot load or start its MPI library
        raise MPIUnavailableError(f"{where}, but mpi4py cannot start MPI ({exc}); {INSTALL_HINT}") from exc
    bad_setting = None
    if timeout is None:
        try:
            timeout = timeout_from_environment(environ)  # type: ignore[arg-type]
        except ValueError as exc:
            bad_setting, timeout = str(exc), None
    comm = MPICommunicator(timeout=timeout)
    if bad_setting is not None:  # found on every rank, or only on some: connected now, so stop them all
        fail(comm, f"error: {bad_setting}", BAD_INPUT)
    if comm.size != launch.size:
        raise DistributedError(
            f"{launch.launcher} started {launch.size} processes, but MPI counts {comm.size}: mpi4py was built "
            f"against another MPI library ({comm.name}) than the one that launched it. Start the run with the "
            "mpiexec of the MPI that mpi4py uses (python -c 'import mpi4py; print(mpi4py.get_config())'), or "
            "rebuild mpi4py against the launcher's MPI; under srun, pass the --mpi= plugin your MPI needs")
    return comm


def for_backend(comm: Communicator, backend: str, cupy: ModuleType | None = None,
                nccl: ModuleType | None = None) -> Communicator:
    """The communicator that sums ``backend``'s gradient buffers; call it before the backend allocates anything.

    NumPy, or one process: ``comm`` itself. CuPy: this rank's GPU is made current, then NCCL sums the
    gradients where CuPy has it, else MPI does (on GPU memory where the MPI is CUDA-aware, through the host
    otherwise).
    """
    if backend != "cupy" or comm.size == 1:
        return comm
    if cupy is None:
        try:
            import cupy
        except ImportError:
            return comm  # the backend itself reports the missing CuPy, with the install command
    select_device(comm.local_rank, comm.local_size, cupy)
    nccl = load_nccl() if nccl is None else nccl
    if nccl is not None:
        return NCCLCommunicator(comm, nccl, cupy)
    from .mpi import cuda_aware

    comm.device_buffers = "cuda-aware" if cuda_aware() else "host"  # type: ignore[attr-defined]
    return comm


def gradient_path(comm: Communicator, backend: str) -> str:
    """One line naming how this run's gradients are summed between processes: by NCCL on the GPUs, by a
    CUDA-aware MPI on GPU memory, or by MPI through host memory (saying what brings NCCL when CuPy lacks it)."""
    if comm.size == 1:
        return f"gradients: one process on {backend}, nothing to sum between processes"
    if isinstance(comm, NCCLCommunicator):
        return f"gradients: summed on the GPUs by {comm.name} ({comm.size} processes)"
    if backend != "cupy":
        return f"gradients: summed by {comm.name} in host memory ({comm.size} processes)"
    if getattr(comm, "device_buffers", "host") == "cuda-aware":
        return (f"gradients: summed on GPU memory by a CUDA-aware {comm.name}; no NCCL in this CuPy "
                f"({comm.size} processes)")
    return (f"gradients: copied to host memory and summed by {comm.name}, no NCCL in this CuPy and the MPI is not "
            f"CUDA-aware ({comm.size} processes; pip install 'npvit[cuda12]' or 'npvit[cuda13]' brings NCCL)")
