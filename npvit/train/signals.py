"""Ctrl-C and SIGTERM as requests to stop: the training loop finishes its step and saves before it exits."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from ..cli.status import Terminated


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what Slurm and Kubernetes send before a kill) as requests to stop.

    Inside ``deferred()`` (the training loop), the first signal only sets ``received``, which the loop checks
    between steps: it finishes the step, saves last.npz and exits, so a checkpoint is never written while the
    parameters are half-updated. A second signal, or one outside, raises at once (KeyboardInterrupt for
    SIGINT, Terminated for SIGTERM).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._deferring = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self._deferring and self.received is None:
            self.received = signum
            again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
            print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint ({again} to "
                  "abort)", file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def __enter__(self) -> "StopSignals":
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave the signals alone
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
