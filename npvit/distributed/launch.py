"""Was this process started as one of many? Read from the launcher's environment, without importing MPI.

Every launcher tells each process its rank and the number of processes through environment variables
before the program starts, so a plain ``python -m npvit.train`` can know that it is alone, and never import
mpi4py, by reading them:

    launcher                          rank                    size                    rank on its node
    mpiexec / mpirun (Open MPI)       OMPI_COMM_WORLD_RANK    OMPI_COMM_WORLD_SIZE    OMPI_COMM_WORLD_LOCAL_RANK
    mpiexec (MPICH Hydra, Intel MPI)  PMI_RANK                PMI_SIZE                MPI_LOCALRANKID
    srun (Slurm)                      SLURM_PROCID            SLURM_STEP_NUM_TASKS    SLURM_LOCALID

Slurm's count is the job step's (``SLURM_STEP_NUM_TASKS``), not the allocation's (``SLURM_NTASKS``): a batch
script runs as rank 0 of an allocation of N tasks, and a ``python`` started there directly is alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from .errors import DistributedError

# (launcher, rank variable, size variable, node-local rank variable), in the order they are tried: an MPI
# launcher's own variables first, since mpiexec inside a Slurm job starts its daemons with srun and its ranks
# inherit Slurm's variables, which then count daemons, not ranks.
LAUNCHERS = (
    ("mpiexec (Open MPI)", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("mpiexec (MPICH Hydra)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("srun (Slurm)", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"),
)


@dataclass(frozen=True)
class Launch:
    """What the launcher says about this process.

    Attributes:
        launcher: which launcher set the variables (for messages).
        rank: this process's index, 0 <= rank < size.
        size: the number of processes started.
        local_rank: this process's index among those on its node, when the launcher says (else None).
    """

    launcher: str
    rank: int
    size: int
    local_rank: int | None


def _read_int(environ: Mapping[str, str], name: str) -> int:
    text = environ[name]
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"the launcher set {name}={text!r}, which is not a whole number") from None


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process is part of, or None when no launcher's variables are set.

    Raises:
        DistributedError: a launcher's variables are set but make no sense (not numbers, rank out of range).
    """
    env = os.environ if environ is None else environ
    for launcher, rank_name, size_name, local_name in LAUNCHERS:
        if rank_name not in env or size_name not in env:
            continue
        rank, size = _read_int(env, rank_name), _read_int(env, size_name)
        if size < 1 or not 0 <= rank < size:
            raise DistributedError(f"the launcher set {rank_name}={rank} and {size_name}={size}: the rank must "
                                   "be at least 0 and below the number of processes")
        local = _read_int(env, local_name) if local_name in env else None
        return Launch(launcher, rank, size, local)
    return None
