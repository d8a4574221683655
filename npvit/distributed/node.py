"""Processes that share a node: its cores, and its download cache.

Cores. ``mpiexec -n 2`` on one machine starts two processes that each see every core; each one running a
thread per core would run twice as many threads as there are cores. Unless the launcher already bound each
process to its own cores (Slurm's ``--cpus-per-task``, Open MPI's default binding for small jobs: the process's
CPU affinity is then smaller than the machine), each process takes an equal share of the node's cores.

Downloads. Every process loads the dataset, but two downloads into one cache folder at once would trip over
each other: rank 0 loads first (downloading if it must), then one process on each other node (a node-local
cache), then all the others, which find it there.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any, Callable, TypeVar

from ..parallel import available_cores

T = TypeVar("T")


def threads_per_process(comm: Any) -> int | None:
    """The default number of threads for this process, or None for the model's own default (one per core).

    ``comm`` is any communicator; one without ``local_size`` counts as alone on its node.
    """
    local_size = getattr(comm, "local_size", 1)
    if local_size <= 1:
        return None
    cores = available_cores()
    if cores < (os.cpu_count() or cores):  # the launcher bound this process to its own cores
        return cores
    return max(1, cores // local_size)


def in_waves(comm: Any, load: Callable[[], T]) -> T:
    """``load()`` on every rank: rank 0 first, then the first rank of every other node, then the rest.

    One barrier per wave, on every rank, so the ranks stay in step; if ``load`` raises on one rank, that rank
    stops the run (``stop_all_on_error``) and the others, waiting at a barrier, stop with it.
    """
    wave = 0 if comm.rank == 0 else 1 if getattr(comm, "local_rank", 0) == 0 else 2
    result: Any = None
    # A download may take longer than the watchdog allows a collective (see npvit.distributed.watchdog).
    with getattr(comm, "without_time_limit", nullcontext)():
        for turn in range(3):
            if turn == wave:
                result = load()
            comm.barrier()
    return result
