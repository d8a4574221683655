"""Exit statuses, the same for every npvit command (train, evaluate, predict, visualize, export, demo).

    0    done
    1    the work could not finish: a loss, gradient or parameter became non-finite (nothing non-finite is
         saved), or a rank of a multi-process job failed
    2    bad input: flags, files, data, a damaged checkpoint, a run folder in use, a missing extra
    3    out of memory (the message says what to lower)
    124  a multi-process job stopped by its watchdog (a collective that never completed)
    130  Ctrl-C (SIGINT); 143 SIGTERM: training finished its step and saved last.npz first
    141  the output pipe closed (``| head``): the command stops quietly

:func:`run_command` runs a command's body and turns each expected error into one ``error: ...`` line and its
status; :func:`outcome` is that mapping alone, for the training command, which must also tell the other
ranks. Anything unexpected keeps its traceback: it is a bug.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

OK, FAILED, BAD_INPUT, OUT_OF_MEMORY, WATCHDOG, INTERRUPTED, TERMINATED, PIPE_CLOSED = 0, 1, 2, 3, 124, 130, 143, 141


class Terminated(BaseException):
    """SIGTERM, raised where a command cannot stop cleanly (like KeyboardInterrupt for SIGINT)."""


class OutOfMemory(Exception):
    """Memory ran out; the message says where and what to lower."""


def outcome(exc: BaseException, expected: tuple[type[BaseException], ...],
            memory_hint: str = "") -> tuple[int, str] | None:
    """The exit status and message of a command that ended with ``exc``, or None if it is not expected.

    ``memory_hint`` says what to change when memory runs out (e.g. "; try a smaller --batch-size").
    """
    if isinstance(exc, MemoryError):
        return OUT_OF_MEMORY, f"error: out of memory{memory_hint}"
    if isinstance(exc, OutOfMemory):
        return OUT_OF_MEMORY, f"error: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED, "\ninterrupted"
    if isinstance(exc, Terminated):
        return TERMINATED, "\nterminated (SIGTERM)"
    if isinstance(exc, expected):
        return BAD_INPUT, f"error: {exc}"
    return None


def run_command(body: Callable[[], int], expected: tuple[type[BaseException], ...], memory_hint: str = "") -> int:
    """``body()``, with each expected error (bad input, a damaged file, a missing extra) printed as one
    ``error: ...`` line on stderr and its status returned instead of a traceback (see :func:`outcome`); a
    closed output pipe ends the command quietly."""
    try:
        return body()
    except BrokenPipeError:  # the reader went away (``| head``): nothing to say, and no one to say it to
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush fails silently
        except (OSError, ValueError):  # stdout is not a file descriptor (captured)
            pass
        return PIPE_CLOSED
    except BaseException as exc:
        result = outcome(exc, expected, memory_hint)
        if result is None:
            raise
        print(result[1], file=sys.stderr)
        return result[0]
