"""Read the CIFAR "python version" pickles without letting them run code.

A pickle is a small program: its ``GLOBAL`` opcodes import any callable and ``REDUCE`` calls it, so
``pickle.load`` on a downloaded file runs whatever the file says (``os.system``, ``builtins.eval``, ...).
The CIFAR pickles only ever hold dicts, lists, bytes, ints and NumPy arrays, and the only globals a NumPy
array pickle names are the three below. :class:`RestrictedUnpickler` resolves exactly those and refuses
every other import with :class:`DataError` before anything is called.

``encoding="bytes"`` keeps the Python 2 ``str`` objects of the official files (dict keys, the raw array
data) as ``bytes`` instead of decoding them as text, which is what NumPy's array reconstruction needs.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import DataError


def _reconstruct() -> Callable[..., Any]:
    try:  # NumPy 2 moved the implementation to numpy._core; numpy.core warns when touched
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


#: (module, name) -> object: the only globals a CIFAR pickle may name. Pickles written by NumPy 1.x and by
#: Python 2 (the official archive) say ``numpy.core``; NumPy 2 writes ``numpy._core``.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds NumPy arrays and plain containers, and refuses every other global."""

    def __init__(self, file: io.BufferedIOBase, *, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refused to load {self.source}: the pickle asks for {module}.{name}, which a CIFAR file never "
                f"needs (only NumPy arrays are allowed). The file is corrupt or not a CIFAR batch; it was "
                f"not run. Replace it with a fresh copy of the dataset."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"refused to load {self.source}: it uses persistent ids, which a CIFAR file never does")


def safe_load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure becomes a :class:`DataError`."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, source=str(path)).load()
    except DataError:
        raise
    except Exception as exc:  # truncated, garbage, wrong shapes in array state, MemoryError, ...
        raise DataError(f"cannot read {path}: not a valid CIFAR pickle ({type(exc).__name__}: {exc}). "
                        f"The file is corrupt; replace it with a fresh copy of the dataset.") from exc
