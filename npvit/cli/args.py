"""What the command-line tools share: argument types, each parsing one flag value or saying what was
expected, and :func:`run_command`, which turns a command's expected errors into one message and a status.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T", int, float)


def _number(text: str, kind: Callable[[str], T], ok: Callable[[T], bool], expected: str) -> T:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a number > 0")


def non_negative(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a number >= 0")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def open_fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < 1, "a number in (0, 1), such as 0.999")


def unit_interval(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def int_list(text: str) -> tuple[int, ...]:
    """'2048,1024' -> (2048, 1024)."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 128,64, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 128,64, got {text!r}")
    return values


def bounded(low: float, high: float) -> Callable[[str], float]:
    """A number in (low, high], e.g. ``--dpi``: a figure's pixel count grows with its square."""
    def parse(text: str) -> float:
        return _number(text, float, lambda v: low < v <= high, f"a number > {low:g} and <= {high:g}")
    parse.__name__ = "number"  # argparse names the type in its messages
    return parse


#: Exit statuses: 2 for bad input (flags, files, data), 1 for running out of memory, 130 for Ctrl-C.
BAD_INPUT, OUT_OF_MEMORY, INTERRUPTED = 2, 1, 130


def run_command(body: Callable[[], int], expected: tuple[type[BaseException], ...], memory_hint: str = "") -> int:
    """``body()``, with each expected error (bad input, a damaged file, a missing extra) printed as one
    ``error: ...`` line on stderr and :data:`BAD_INPUT` returned instead of a traceback. MemoryError and
    Ctrl-C are reported the same way, and a closed output pipe (``| head``) ends the command quietly;
    anything else propagates with its traceback, since it is a bug.
    ``memory_hint`` says what to change when memory runs out (e.g. "; try a smaller --batch-size").
    """
    try:
        return body()
    except BrokenPipeError:  # the reader went away (``| head``): nothing to say, and no one to say it to
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush fails silently
        except (OSError, ValueError):  # stdout is not a file descriptor (captured)
            pass
        return 1
    except expected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    except MemoryError:
        print(f"error: out of memory{memory_hint}", file=sys.stderr)
        return OUT_OF_MEMORY
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED
