"""Data-parallel training over many processes: MPI between CPU nodes, NCCL between GPUs.

    comm = npvit.distributed.connect()     # SingleProcess unless started by mpiexec / srun
    part = rank_slice(len(batch), comm.rank, comm.size)
    ...                                    # forward and backward on batch[part]
    comm.allreduce_sum(flat_gradients)     # every rank now holds the sum over ranks
    loss_sum, correct, seen = comm.allreduce_scalars([loss_sum, correct, seen])

The pieces, one concept per module:

    launch         which launcher started this process, from its environment (never imports mpi4py)
    communicator   the Communicator interface and SingleProcess
    mpi            MPICommunicator (mpi4py)
    nccl           NCCLCommunicator (cupy.cuda.nccl) and the choice of each rank's GPU
    connect        connect() and for_backend(): the communicator a run should use
    split          each rank's part of a batch, and the gradient weight that keeps the global mean
    evaluation     an evaluation split across ranks, reduced exactly
    faults         one rank's failure stops every rank (MPI_Abort), naming the rank
    watchdog       a time limit on waiting for peers, for launchers that leave survivors waiting
"""

from .communicator import Communicator, SingleProcess
from .connect import connect, for_backend
from .errors import DistributedError, MPIUnavailableError
from .faults import fail, rank_prefix, stop_all_on_error
from .launch import Launch, detect_launch
from .split import check_batch_size, gradient_weight, rank_slice

__all__ = [
    "Communicator",
    "DistributedError",
    "Launch",
    "MPIUnavailableError",
    "SingleProcess",
    "check_batch_size",
    "connect",
    "detect_launch",
    "fail",
    "for_backend",
    "gradient_weight",
    "rank_prefix",
    "rank_slice",
    "stop_all_on_error",
]
