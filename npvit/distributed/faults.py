"""When one rank fails alone, every rank stops: no process may wait for ever for one that is gone.

A Python exception on one rank leaves the others blocked in their next collective operation, and the failed
rank itself blocks in MPI_Finalize at exit waiting for them (MPICH does): the job would hang. So a failing
rank prints what happened, naming itself, and calls MPI_Abort, which ends every process of the job within a
second or so with the given exit status. (A rank that dies outright, by SIGKILL or a crash, is seen by the
launcher, which ends the others: see :mod:`npvit.distributed.watchdog` for launchers that do not.)
"""

from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager
from typing import Iterator, NoReturn

from .communicator import Communicator


def rank_prefix(comm: Communicator) -> str:
    """``"rank 1 of 4: "`` in a run of several processes, nothing for one."""
    return f"rank {comm.rank} of {comm.size}: " if comm.size > 1 else ""


def fail(comm: Communicator, message: str, status: int = 2) -> NoReturn:
    """Print ``message`` naming this rank, then stop every process of the run with ``status``."""
    print(f"{rank_prefix(comm)}{message}", file=sys.stderr, flush=True)
    comm.abort(status)


@contextmanager
def stop_all_on_error(comm: Communicator) -> Iterator[None]:
    """Run the body; if it raises on this rank, print the traceback naming the rank and abort the whole run.

    On one process exceptions pass through unchanged. ``SystemExit(0)`` passes through everywhere; any other
    exit status of one rank also stops the others, since nothing says they are leaving too.
    """
    try:
        yield
    except SystemExit as exc:
        if comm.size == 1 or exc.code in (0, None):
            raise
        status = exc.code if isinstance(exc.code, int) else 1
        fail(comm, f"exited with status {status}" + (" (bad flags: see the usage message above)"
                                                       if status == 2 else ""), status)
    except BaseException as exc:
        if comm.size == 1:
            raise
        status = 130 if isinstance(exc, KeyboardInterrupt) else 1
        fail(comm, "failed:\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip(),
             status)
