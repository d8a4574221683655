"""Read the CIFAR "python version" pickles without letting them run code or allocate what they do not hold.

A pickle is a small program: its ``GLOBAL`` opcodes import any callable and ``REDUCE`` calls it, so
``pickle.load`` on a downloaded file runs whatever the file says (``os.system``, ``builtins.eval``, ...).
The CIFAR pickles only ever hold dicts, lists, bytes, ints and NumPy arrays. :class:`RestrictedUnpickler`
resolves only the few globals those need, each to a stand-in of ours that checks its arguments, and refuses
every other import with :class:`DataError` before anything is called.

Arrays are built only from bytes that are in the file. NumPy's own pickle support would honour a declared
shape (``numpy.ndarray((100000, 3072), uint8)`` from a 165-byte file: 300 MB of uninitialised memory), so
``numpy.ndarray`` is never called: an array's recipe (``_reconstruct`` then ``BUILD`` with shape, dtype and
raw bytes, or protocol 5's ``_frombuffer``) is checked -- plain numeric or text dtype, byte count equal to
shape times item size -- and the array is a view of those bytes. ``numpy.dtype``'s state is read by us too,
since NumPy's accepts item sizes of any value. Every form NumPy and Python write is read:
Python 2's cPickle (the official files), protocol 2 from Python 3 (bytes via ``_codecs.encode``), 3, 4 and 5.

``encoding="bytes"`` keeps the Python 2 ``str`` objects of the official files (dict keys, the raw array
data) as ``bytes`` instead of decoding them as text, which is what the array data needs.
"""

from __future__ import annotations

import math
import os
import pickle
from typing import Any, BinaryIO

import numpy as np

from .errors import DataError

#: dtype kinds an array in a CIFAR pickle may have: booleans, integers, floats, bytes and text (no objects,
#: no structured records).
ARRAY_KINDS = "biufSU"
MAX_DIMS = 32
MAX_NESTING = 64  # containers inside containers; a CIFAR file nests two deep


class _ArrayClass:
    """Stands for ``numpy.ndarray``, which a pickle may only pass to ``_reconstruct``; never callable."""


_NDARRAY = _ArrayClass()


class _ArrayRecipe:
    """What ``_reconstruct`` returns: an array still to be built from the state that ``BUILD`` hands over."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        """NumPy's array state: (version, shape, dtype, is_fortran, raw bytes); version 0 has no version."""
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise DataError(f"an array's state is not NumPy's (shape, dtype, order, data): "
                            f"{type(state).__name__} of length {len(state) if isinstance(state, tuple) else '-'}")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(fortran, bool):
            raise DataError("an array's memory order is not a boolean")
        self.array = _array_from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _checked_dtype(dtype: Any) -> np.dtype:
    if isinstance(dtype, _DtypeRecipe):
        dtype = dtype.dtype
    if not isinstance(dtype, np.dtype):
        raise DataError(f"an array's dtype is a {type(dtype).__name__}, not a NumPy dtype")
    if dtype.kind not in ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None \
            or dtype.itemsize < 1:
        raise DataError(f"an array has dtype {dtype}; a CIFAR file holds only plain numbers and strings")
    return dtype


def _checked_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or len(shape) > MAX_DIMS or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise DataError(f"an array's shape is not a tuple of sizes >= 0: {str(shape)[:80]}")
    return shape


def _array_from_bytes(raw: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """A read-only array over ``raw``, once its length is exactly what shape and dtype declare."""
    dtype, shape = _checked_dtype(dtype), _checked_shape(shape)
    if not isinstance(raw, (bytes, bytearray)):
        raise DataError(f"an array's data is a {type(raw).__name__}, not bytes")
    if order not in ("C", "F"):
        raise DataError(f"an array's memory order is {str(order)[:20]!r}, not C or F")
    declared = math.prod(shape) * dtype.itemsize
    if declared != len(raw):
        raise DataError(f"an array declares shape {shape} of {dtype} ({declared} bytes) but holds {len(raw)} "
                        f"bytes of data")
    return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order=order)


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _ArrayRecipe:
    """Stands for ``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``, the first step of an array."""
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise DataError("an array is reconstructed with arguments NumPy never writes")
    return _ArrayRecipe()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Stands for ``numpy.core.numeric._frombuffer``, which protocol 5 uses for contiguous arrays."""
    if isinstance(buf, pickle.PickleBuffer):
        buf = bytes(buf)
    return _array_from_bytes(buf, dtype, shape, order)


class _DtypeRecipe:
    """What ``numpy.dtype(code, align, copy)`` returns here: a dtype from a short type code, whose byte order
    the ``BUILD`` that follows sets. NumPy's own dtype ``__setstate__`` accepts fields, subarrays and item
    sizes of any value (``S-1``, ``S1000000000000``), so it never sees the file's state: this class reads
    the one form NumPy writes for a plain dtype and refuses the rest."""

    def __init__(self, code: Any) -> None:
        if isinstance(code, bytes):
            code = code.decode("ascii", errors="replace")
        if not isinstance(code, str) or len(code) > 8:
            raise DataError(f"a dtype is described by {str(code)[:40]!r}, not a short type code")
        try:
            self.dtype = _checked_dtype(np.dtype(code))
        except TypeError as exc:
            raise DataError(f"a dtype is described by {code!r}: {exc}") from None

    def __setstate__(self, state: Any) -> None:
        """NumPy's dtype state: (3, byte order, None, None, None, item size or -1, alignment, flags)."""
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4) \
                or state[2:5] != (None, None, None):
            raise DataError(f"a dtype's state is not that of a plain dtype: {str(state)[:80]}")
        order, itemsize = state[1], state[5]
        if isinstance(order, bytes):  # Python 2's str, kept as bytes
            order = order.decode("ascii", errors="replace")
        if order not in ("<", ">", "|", "=") or itemsize not in (-1, self.dtype.itemsize):
            raise DataError(f"a dtype's state does not match its type code {self.dtype.str}: {str(state)[:80]}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


def _dtype(code: Any, align: Any = False, copy: Any = True) -> _DtypeRecipe:
    """Stands for ``numpy.dtype``, as a pickle calls it: ``dtype('u1', False, True)`` then ``BUILD``."""
    return _DtypeRecipe(code)


def _encode(text: Any, encoding: Any) -> bytes:
    """Stands for ``_codecs.encode(str, 'latin1')``: how protocols 0-2 from Python 3 write ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise DataError("_codecs.encode is used for something other than writing bytes")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """Stands for ``bytes()``, how protocols 0-2 from Python 3 write an empty ``bytes`` (``bytes(n)`` would
    allocate n bytes the file does not hold, so arguments are refused)."""
    if args:
        raise DataError("bytes() is called with arguments, which no pickle of data needs")
    return b""


#: (module, name) -> stand-in: the only globals a CIFAR pickle may name. Pickles written by NumPy 1.x and by
#: Python 2 (the official archive) say ``numpy.core``; NumPy 2 writes ``numpy._core``.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds NumPy arrays and plain containers, and refuses every other global."""

    def __init__(self, file: BinaryIO, *, source: str = "<pickle>") -> None:
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


def _finish(obj: Any, depth: int = 0) -> Any:
    """``obj`` with every array recipe replaced by its array (containers rebuilt, everything else as is)."""
    if depth > MAX_NESTING:
        raise DataError(f"containers are nested more than {MAX_NESTING} deep")
    if isinstance(obj, _ArrayRecipe):
        if obj.array is None:
            raise DataError("an array is reconstructed but never given its data")
        return obj.array
    if isinstance(obj, dict):
        return {_finish(k, depth + 1): _finish(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finish(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finish(v, depth + 1) for v in obj)
    if isinstance(obj, _DtypeRecipe):
        return obj.dtype
    if isinstance(obj, _ArrayClass):
        raise DataError("numpy.ndarray appears outside an array's reconstruction")
    return obj


def safe_load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure becomes a :class:`DataError`."""
    try:
        with open(path, "rb") as f:
            return _finish(RestrictedUnpickler(f, source=str(path)).load())
    except DataError as exc:
        if str(exc).startswith("refused to load"):
            raise
        raise DataError(f"cannot read {path}: not a valid CIFAR pickle ({exc}). The file is corrupt; replace it "
                        f"with a fresh copy of the dataset.") from None
    except MemoryError:
        raise DataError(f"cannot read {path}: it declares more data than memory holds (and more than a CIFAR "
                        f"file has). The file is corrupt; replace it with a fresh copy of the dataset.") from None
    except Exception as exc:  # truncated, garbage, a non-callable called, RecursionError, ...
        raise DataError(f"cannot read {path}: not a valid CIFAR pickle ({type(exc).__name__}: "
                        f"{str(exc)[:200]}). The file is corrupt; replace it with a fresh copy of the "
                        f"dataset.") from exc
