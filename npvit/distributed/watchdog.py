"""A time limit on waiting for the other processes, so a run whose peer died never hangs forever.

When one process of an MPI job dies, ``mpiexec`` (MPICH's Hydra, Open MPI) ends all the others within about
a second. Not every launcher does: ``srun`` waits for the remaining tasks unless started with
``--kill-on-bad-exit=1`` (or the cluster sets ``KillOnBadExit``), and they would wait in their next collective
operation for ever. The watchdog is the bound: a thread that ends this process, naming its rank, when one
collective operation has waited longer than ``timeout`` seconds. No legitimate wait in training comes near
that: ranks meet once per training step, and the longest a rank waits is while rank 0 writes a checkpoint.
Waits of unknown length (the others waiting while rank 0 downloads the dataset) are made without the limit
(``MPICommunicator.without_time_limit``).

The process ends by ``os._exit``, the only way out of a thread while the main thread is blocked inside MPI;
the launcher then sees a rank fail, which is what it needs to end (or report) the job.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

TIMEOUT_VARIABLE = "NPVIT_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT = 600.0  # seconds; 0 turns the watchdog off
EXIT_STATUS = 124  # as timeout(1) reports a command it had to stop


def timeout_from_environment(environ: dict[str, str] | None = None) -> float:
    """Seconds from ``$NPVIT_COLLECTIVE_TIMEOUT`` (default 600; 0 means no limit)."""
    env = os.environ if environ is None else environ
    text = env.get(TIMEOUT_VARIABLE, "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{TIMEOUT_VARIABLE}={text!r}: expected a number of seconds, 0 for no limit")
    return value


class Watchdog:
    """Ends the process when a guarded wait lasts longer than ``timeout`` seconds.

    ``with watchdog.guard("allreduce"): comm.Allreduce(...)`` arms it for that call; the thread checks a few
    times a second and costs nothing between calls.
    """

    def __init__(self, timeout: float, rank: int, size: int,
                 on_expiry: Callable[[str], None] | None = None) -> None:
        if not timeout > 0:
            raise ValueError(f"watchdog timeout must be positive, got {timeout}")
        self.timeout, self.rank, self.size = timeout, rank, size
        self._on_expiry = on_expiry or _exit_process
        self._deadline: float | None = None
        self._what = ""
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="npvit-watchdog", daemon=True)
            self._thread.start()
        self._what = what
        self._deadline = time.monotonic() + self.timeout
        try:
            yield
        finally:
            self._deadline = None

    def _watch(self) -> None:
        period = min(1.0, self.timeout / 4)
        while True:
            time.sleep(period)
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                self._on_expiry(
                    f"npvit: rank {self.rank} of {self.size}: no answer from the other processes after "
                    f"{self.timeout:g} s in {self._what}; one of them has probably died or hangs. Stopping this "
                    f"process (the limit is ${TIMEOUT_VARIABLE}, in seconds; 0 for none).")
                return


def _exit_process(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(EXIT_STATUS)
