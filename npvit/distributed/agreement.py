"""The ranks agree before they train together: one small exchange at start and after every resume.

Data parallelism is only right if every rank holds the same settings, is at the same step, and starts from
the same weights, optimizer state and data: ranks resumed from different checkpoints (a stale or unshared
file system), or started with different flags, would add gradients of different models, train a mix of them
or deadlock. ``agree`` compares each rank's record, an ordered mapping of small JSON values (settings,
the step, hashes), with rank 0's:

    rank 0's record  --broadcast-->  every rank
    each rank r: d_r = 1 + index of its first entry that differs (0 if none)
    [d_0, ..., d_{N-1}]  <--one allreduce of N numbers--
    the first rank r with d_r > 0 sends its value of that entry (one more broadcast), and every rank stops
    with the same message naming the entry, both values and the ranks that differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

import numpy as np

from .communicator import Communicator, json_copy
from .errors import DistributedError


class RanksDisagree(DistributedError):
    """The ranks of a run do not hold the same settings, step, weights or data."""


def digest(arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """A hash of named host arrays (names, dtypes, shapes and bytes), 16 hex digits."""
    h = hashlib.sha256()
    for name, array in arrays:
        a = np.ascontiguousarray(array)
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def agree(comm: Communicator, record: Mapping[str, Any], what: str = "") -> None:
    """Return if every rank's ``record`` equals rank 0's; else raise RanksDisagree on every rank.

    Every rank must build its record with the same keys in the same order (the values may differ). One
    process: nothing to compare.
    """
    if comm.size == 1:
        return
    mine = json_copy(dict(record))
    keys = list(mine)
    reference = comm.broadcast(mine)  # rank 0's
    first = next((i + 1 for i, key in enumerate(keys) if reference.get(key) != mine[key]), 0)
    marks = [0.0] * comm.size
    marks[comm.rank] = float(first)
    marks = comm.allreduce_scalars(marks)
    differing = [r for r, mark in enumerate(marks) if mark > 0]
    if not differing:
        return
    rank = differing[0]
    key = keys[int(marks[rank]) - 1]
    theirs = comm.broadcast(mine[key] if comm.rank == rank else None, root=rank)
    others = ", ".join(str(r) for r in differing)
    raise RanksDisagree(
        f"the {comm.size} processes disagree{what}: {key} is {_short(reference.get(key))} on rank 0 and "
        f"{_short(theirs)} on rank {rank} (rank{'s' if len(differing) > 1 else ''} {others} differ from rank 0). "
        "Every rank must get the same flags and see the same run folder and data (a shared file system); "
        "nothing was trained")
