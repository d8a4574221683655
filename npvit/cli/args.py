"""Argument types for the command-line tools: each parses one flag value or says what was expected."""

from __future__ import annotations

import argparse
import math
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
