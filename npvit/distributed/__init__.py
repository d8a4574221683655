"""Data-parallel training over many processes: MPI between CPU nodes, NCCL between GPUs.

    comm = npvit.distributed.connect()     # SingleProcess unless started by mpiexec / srun
    comm = npvit.distributed.for_backend(comm, "cupy")   # GPUs: this rank's device, NCCL for the gradients
    npvit.train.train(settings, comm=comm)  # train_step: each rank its rank_slice of every batch, then
                                            # comm.allreduce_sum(model.grads.flat), the same AdamW step

The pieces, one concept per module:

    launch         which launcher started this process, from its environment (never imports mpi4py)
    communicator   the Communicator interface and SingleProcess
    mpi            MPICommunicator (mpi4py)
    nccl           NCCLCommunicator (cupy.cuda.nccl) and the choice of each rank's GPU
    connect        connect(), for_backend() and gradient_path(): the communicator a run uses, in words
    split          each rank's part of a batch, and the smallest global batch
    node           processes sharing a node: threads per process, downloads one node at a time
    agreement      the ranks compare settings, step, weights and data before training together
    faults         one rank's failure stops every rank (MPI_Abort), naming the rank
    watchdog       a time limit on waiting for peers, for launchers that leave survivors waiting
"""

from .agreement import RanksDisagree, agree, digest
from .communicator import Communicator, SingleProcess
from .connect import connect, for_backend, gradient_path
from .errors import DistributedError, MPIUnavailableError
from .faults import fail, rank_prefix, stop_all_on_error
from .launch import Launch, detect_launch
from .node import in_waves, threads_per_process
from .split import check_batch_size, rank_slice

__all__ = [
    "Communicator",
    "DistributedError",
    "Launch",
    "RanksDisagree",
    "MPIUnavailableError",
    "SingleProcess",
    "agree",
    "check_batch_size",
    "connect",
    "digest",
    "detect_launch",
    "fail",
    "for_backend",
    "gradient_path",
    "in_waves",
    "rank_prefix",
    "rank_slice",
    "stop_all_on_error",
    "threads_per_process",
]
