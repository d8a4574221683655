"""A stand-in for CuPy that runs on the CPU and makes every host synchronisation visible.

``install()`` (or the ``fake_cupy`` fixture) puts a module object in ``sys.modules["cupy"]`` (with ``cupyx``,
``cupyx.scipy.special`` and ``cupyx.scipy.ndimage``), so that ``npvit.get_backend("cupy")``,
``get_array_module`` and every ``xp is not numpy`` branch take npvit's GPU code path on the CPU. Its
``ndarray`` holds a NumPy array and behaves as a device array does:

* Converting it to a host value -- ``float()``, ``int()``, ``bool()``, ``operator.index``, ``complex()``,
  ``item()``, ``tolist()``, iterating over it, indexing it with a boolean mask (the result's size depends on
  the data) -- is a blocking device-to-host synchronisation on a GPU. Here it raises :class:`HostSyncError`
  (strict mode, the default) or, inside ``syncs.recording()``, is recorded with the line of npvit that did it.
  ``HostSyncError`` derives from BaseException, so ``except Exception`` in the code under test cannot hide it.
* ``numpy.asarray(device_array)`` (``__array__``) always raises, as CuPy does ("implicit conversion to a NumPy
  array is not allowed"); NumPy ufuncs and binary operators with a NumPy array operand raise ``TypeError``.
* ``.get()`` and ``cupy.asnumpy`` -- explicit copies to the host -- work and are counted (``syncs.gets``);
  host data turned into device arrays (``asarray`` of a NumPy array, list or scalar) is counted too
  (``syncs.uploads``), as are stream synchronisations (``syncs.synchronizes``).

Only names CuPy 14 has are offered (each checked against CuPy 14.2's namespace), with CuPy's semantics where
they differ from NumPy's: reductions return 0-d arrays, not scalars; ``random.Generator`` draws are device
arrays; ``random.Philox4x3210(seed, size=...)`` refuses a size that is not a multiple of 256 (CuPy's kernels
would read and write states past the end); NumPy 2 type promotion (CuPy 14 follows NEP 50). Generators draw
from NumPy's Philox, so the numbers differ from a GPU's (tests compare paths, never hard-coded draws).

Use in a test module::

    from fakecupy import fake_cupy, host_syncs, to_fake, from_fake   # the fixtures, and setup/check helpers

    def test_steps_without_a_sync(fake_cupy, host_syncs):
        backend = npvit.get_backend("cupy")             # the fake; its smoke test reads back once
        host_syncs.reset()
        ...                                             # any implicit host read raises HostSyncError
        assert host_syncs.gets == 0                     # and no explicit copy either

``with host_syncs.recording():`` records instead of raising; ``host_syncs.sites`` then names each line that
synchronised. ``to_fake``/``from_fake`` move test data in and out without being counted.

Functions that CuPy 14's own source makes wait for the device before launching are syncs too: ``bincount``
(``(x < 0).any()`` and ``int(cupy.max(x))``), ``histogram``, ``nonzero``, ``flatnonzero``, ``argwhere``,
``unique``; so is printing an array (``repr``, ``str``, ``format``).

``LAUNCHES`` counts the kernels a GPU would run (``LAUNCHES.counts`` by kind: elementwise, reduction, matmul,
copy, kernel; ``LAUNCHES.total``); views launch nothing; ``LAUNCHES.sites = {}`` also records where.
``cupy.fuse`` runs the function op by op, counted as one kernel. ``cupy.ElementwiseKernel`` and
``cupy.RawKernel`` cannot run CUDA C: call ``emulate_kernel(name, function)`` to give the kernel of that name a
NumPy implementation (one launch per call). ``cupy.cuda.nccl`` is one rank of CuPy 14's binding: its
``NcclCommunicator`` takes the unique id as ``bytes`` only, as CuPy 14 does.
TF32 switches (``cupy._core.set_compute_type``, ``cupy.cuda.cublas.setMathMode``) are recorded in
``fake.tf32_calls`` and modelled: float32 matrix products round their inputs to TF32 where CuPy's would --
2-D products when the compute type is TF32, batched (ndim > 2) ones when the cuBLAS math mode is.
"""

from __future__ import annotations

import contextlib
import operator
import sys
import traceback
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy
import pytest
import scipy.ndimage
import scipy.special

import fakegraph
import fakekernels

THIS_FILE = __file__.rsplit(".", 1)[0]
_OWN_FILES = tuple(f.rsplit(".", 1)[0] for f in (__file__, fakegraph.__file__, fakekernels.__file__))


class HostSyncError(BaseException):
    """A device array was turned into a host value: on a GPU this drains the stream and blocks."""


@dataclass(frozen=True)
class Site:
    """Where an implicit host synchronisation happened: the innermost frame outside this file."""

    what: str
    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{self.what} at {self.filename}:{self.lineno} in {self.function}()"


@dataclass
class HostSyncs:
    """What crossed between the fake device and the host since the last ``reset()``."""

    strict: bool = True
    sites: list[Site] = field(default_factory=list)  # implicit syncs, recorded when not strict
    gets: int = 0  # explicit copies to the host (.get(), cupy.asnumpy)
    uploads: int = 0  # host data made into device arrays
    synchronizes: int = 0  # stream / device synchronisations

    def reset(self) -> None:
        self.sites.clear()
        self.gets = self.uploads = self.synchronizes = 0

    @contextlib.contextmanager
    def recording(self) -> Iterator["HostSyncs"]:
        """Record implicit syncs in ``sites`` instead of raising, inside the block."""
        previous, self.strict = self.strict, False
        try:
            yield self
        finally:
            self.strict = previous

    def sync(self, what: str) -> None:
        fakegraph.check_no_sync(what, HostSyncError)
        if self.strict:
            raise HostSyncError(f"{what} of a device array: a blocking device-to-host synchronisation")
        frame = next(f for f in reversed(traceback.extract_stack()[:-1]) if not f.filename.startswith(_OWN_FILES))
        self.sites.append(Site(what, frame.filename, frame.lineno or 0, frame.name))

    def functions(self) -> set[str]:
        """Names of the functions where the recorded syncs happened."""
        return {site.function for site in self.sites}


SYNCS = HostSyncs()


@dataclass
class Launches:
    """Kernels the fake device would run, by kind, since the last ``reset()``: every elementwise operation,
    reduction, matrix product and copy on device arrays, every random draw, and every fused function,
    ElementwiseKernel or RawKernel call (one each, whatever runs inside). Views (reshape, transpose, basic
    slicing) launch nothing. What a GPU's launch queue would hold, the cost that paces a step from Python."""

    counts: dict[str, int] = field(default_factory=dict)
    depth: int = 0  # > 0 inside a fused function or kernel emulation: its operations are one launch
    serial: int = 0  # launches counted since the fake was made (never reset): tells a call that launched
    sites: dict[str, int] | None = None  # "file:line function" -> launches there, when tracing

    def reset(self) -> None:
        self.counts.clear()
        if self.sites is not None:
            self.sites.clear()

    def launch(self, kind: str) -> None:
        if self.depth == 0:
            self.serial += 1
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if self.sites is not None:
                frame = next(f for f in reversed(traceback.extract_stack()[:-1])
                             if not f.filename.startswith(_OWN_FILES))
                key = f"{frame.filename.rsplit('/npvit/', 1)[-1]}:{frame.lineno} {frame.name}"
                self.sites[key] = self.sites.get(key, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @contextlib.contextmanager
    def one_kernel(self) -> Iterator[None]:
        """Everything inside counts as the single launch counted before entering."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


LAUNCHES = Launches()

_REDUCTIONS = {"sum", "mean", "max", "min", "argmax", "argmin", "all", "any", "prod", "var", "std", "cumsum",
               "count_nonzero", "sort", "argsort", "allclose", "array_equal", "nonzero", "unique"}
_MATMULS = {"matmul", "dot", "tensordot", "einsum"}
_COPIES = {"concatenate", "stack", "ascontiguousarray", "copyto", "take", "take_along_axis", "pad", "tile",
           "repeat"}
_VIEWS = {"broadcast_to", "expand_dims", "moveaxis", "reshape", "ravel", "squeeze", "swapaxes", "transpose",
          "flip", "empty", "empty_like"}
_KERNELS = {"bincount", "histogram", "scatter_add", "searchsorted", "map_coordinates", "affine_transform"}
# What CuPy 14's own source reads on the host before it can launch (cupy/_statistics/histogram.py,
# cupy/_indexing/indexing.py, cupy/_manipulation/add_remove.py, cupy/_sorting/search.py).
_WAITS = {
    "bincount": ("bincount's (x < 0).any() check", "bincount's int(cupy.max(x)) size"),
    "histogram": ("histogram's bin edges and range (min and max) on the host",),
    "nonzero": ("nonzero() (a data-dependent size)",),
    "flatnonzero": ("flatnonzero() (a data-dependent size)",),
    "argwhere": ("argwhere() (a data-dependent size)",),
    "unique": ("unique() (a data-dependent size)",),
}


def _kind(name: str) -> str | None:
    """The kind of launch CuPy's function ``name`` makes (None: a view or an allocation, no kernel)."""
    if name in _VIEWS:
        return None
    for kind, names in (("reduction", _REDUCTIONS), ("matmul", _MATMULS), ("copy", _COPIES),
                        ("kernel", _KERNELS)):
        if name in names:
            return kind
    return "elementwise"
_SCALARS = (bool, int, float, complex, numpy.generic)


# ------------------------------------------------------------------------------------------------ arrays
def _unwrap(value: Any) -> Any:
    """Fake arrays (also inside lists and tuples) -> their NumPy arrays; NumPy arrays are refused."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, numpy.ndarray):
        raise TypeError(f"Unsupported type {type(value)}: a host array given to a device operation "
                        "(move it with cupy.asarray first)")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    return value


def _wrap(value: Any) -> Any:
    """NumPy results -> fake arrays (NumPy scalars become 0-d arrays, as CuPy returns)."""
    if isinstance(value, numpy.ndarray):
        return ndarray._of(value)
    if isinstance(value, numpy.generic):
        return ndarray._of(numpy.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _operand(value: Any) -> Any:
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, numpy.ndarray):
        raise TypeError(f"Unsupported type {type(value)}: operands must be device arrays or scalars")
    return NotImplemented


def _tf32(a: Any) -> Any:
    """float32 values rounded to TF32 (10-bit mantissa, round to nearest), as tensor cores read them."""
    if not isinstance(a, numpy.ndarray) or a.dtype != numpy.float32:
        return a
    bits = a.view(numpy.uint32)
    return ((bits + numpy.uint32(0x1000)) & numpy.uint32(0xFFFFE000)).view(numpy.float32)


def _product(fn: Callable, batched: bool | None = None) -> Callable:
    """A matrix product that rounds float32 inputs to TF32 where CuPy would: 2-D products (cublasGemmEx)
    when the float32 compute type is TF32, batched ones (ndim > 2: cublasGemmStridedBatchedEx, given no
    compute type) when the cuBLAS math mode is TF32; on compute capability 8.0 or later only."""
    def product(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
        is_batched = batched if batched is not None else max(numpy.ndim(a), numpy.ndim(b)) > 2
        on = (FAKE.math_mode == 3) if is_batched else (FAKE.compute_type == 7)
        if on and int(FAKE.compute_capability) >= 80:
            a, b = _tf32(a), _tf32(b)
        return fn(a, b, *args, **kwargs)
    return product


def _binary(op: Callable, reflected: bool = False, kind: str = "elementwise") -> Callable:
    def method(self: "ndarray", other: Any) -> Any:
        b = _operand(other)
        if b is NotImplemented:
            return NotImplemented
        LAUNCHES.launch(kind)
        return _wrap(op(b, self._a) if reflected else op(self._a, b))
    return method


def _inplace(op: Callable) -> Callable:
    def method(self: "ndarray", other: Any) -> "ndarray":
        b = _operand(other)
        if b is NotImplemented:
            return NotImplemented
        LAUNCHES.launch("elementwise")
        op(self._a, b, out=self._a, casting="same_kind")
        return self
    return method


def _index(key: Any) -> Any:
    """An index with fake arrays unwrapped; host integer arrays (which CuPy uploads) counted as uploads."""
    items = key if isinstance(key, tuple) else (key,)
    out = []
    for k in items:
        if isinstance(k, ndarray):
            out.append(k._a)
        elif isinstance(k, (numpy.ndarray, list)):
            fakegraph.check_no_sync("an index uploaded from the host", HostSyncError)
            SYNCS.uploads += 1
            out.append(numpy.asarray(k))
        else:
            out.append(k)
    return tuple(out) if isinstance(key, tuple) else out[0]


class ndarray:  # noqa: N801 -- CuPy's name
    """A device array of the fake CuPy (see the module docstring)."""

    __slots__ = ("_a", "__weakref__")
    __array_ufunc__ = None  # NumPy ufuncs and operators defer to us, and we refuse host operands
    __array_priority__ = 1000

    def __init__(self, shape: Any, dtype: Any = float, order: str = "C") -> None:
        self._a = numpy.empty(shape, dtype=dtype, order=order)
        fakegraph.track(self._a)

    @classmethod
    def _of(cls, a: numpy.ndarray) -> "ndarray":
        obj = cls.__new__(cls)
        obj._a = a
        fakegraph.track(a)
        return obj

    # -- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray._of(self._a.T))
    base = property(lambda self: None if self._a.base is None else ndarray._of(self._a.base))
    data = property(lambda self: types.SimpleNamespace(ptr=self._a.ctypes.data))  # a MemoryPointer's .ptr

    def __len__(self) -> int:
        return len(self._a)

    # -- host conversions: synchronisations
    def __float__(self) -> float:
        SYNCS.sync("float()")
        return float(self._a)

    def __int__(self) -> int:
        SYNCS.sync("int()")
        return int(self._a)

    def __index__(self) -> int:
        SYNCS.sync("operator.index()")
        return operator.index(self._a)

    def __bool__(self) -> bool:
        SYNCS.sync("bool()")
        return bool(self._a)

    def __complex__(self) -> complex:
        SYNCS.sync("complex()")
        return complex(self._a)

    def item(self) -> Any:
        SYNCS.sync("item()")
        return self._a.item()

    def tolist(self) -> Any:
        SYNCS.sync("tolist()")
        return self._a.tolist()

    def __iter__(self) -> Iterator["ndarray"]:
        SYNCS.sync("iteration")
        return iter([ndarray._of(self._a[i, ...]) for i in range(len(self._a))])

    def __array__(self, dtype: Any = None, copy: Any = None) -> numpy.ndarray:
        raise HostSyncError("numpy.asarray() of a device array: CuPy refuses implicit conversion to a NumPy "
                            "array (TypeError); copy explicitly with .get()")

    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> numpy.ndarray:
        """Explicit copy to the host: allowed, counted."""
        fakegraph.check_no_sync(".get()", HostSyncError)
        SYNCS.gets += 1
        return numpy.array(self._a, order=order)

    def __repr__(self) -> str:  # CuPy's repr and str print the values: a copy to the host
        SYNCS.sync("printing")
        return f"fakecupy.ndarray(shape={self.shape}, dtype={self.dtype})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        SYNCS.sync("formatting")
        return format(self._a, spec)

    def nonzero(self) -> tuple["ndarray", ...]:
        SYNCS.sync("nonzero() (a data-dependent size)")
        LAUNCHES.launch("reduction")
        return _wrap(self._a.nonzero())

    # -- indexing
    def __getitem__(self, key: Any) -> "ndarray":
        idx = _index(key)
        for k in idx if isinstance(idx, tuple) else (idx,):
            if isinstance(k, numpy.ndarray) and k.dtype == bool:
                SYNCS.sync("boolean-mask indexing (a data-dependent size)")
        if any(isinstance(k, numpy.ndarray) for k in (idx if isinstance(idx, tuple) else (idx,))):
            LAUNCHES.launch("copy")  # a gather
        result = self._a[idx]
        if isinstance(result, numpy.generic):  # a full integer index: CuPy gives a 0-d view
            result = self._a[(idx if isinstance(idx, tuple) else (idx,)) + (Ellipsis,)]
        return ndarray._of(result)

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, numpy.ndarray) or isinstance(value, (list, tuple)):
            raise TypeError("CuPy refuses assignment from host arrays (cupy gh-2079): cupy.asarray() it first")
        LAUNCHES.launch("copy")
        self._a[_index(key)] = _operand(value)

    # -- methods (CuPy's ndarray has each of these; results are device arrays)
    def reshape(self, *shape: Any, order: str = "C") -> "ndarray":
        result = self._a.reshape(*shape, order=order)
        if result.size and not numpy.shares_memory(result, self._a):
            LAUNCHES.launch("copy")  # a non-contiguous array reshaped: CuPy copies it first
        return ndarray._of(result)

    def transpose(self, *axes: Any) -> "ndarray":
        return ndarray._of(self._a.transpose(*axes))

    def swapaxes(self, a: int, b: int) -> "ndarray":
        return ndarray._of(self._a.swapaxes(a, b))

    def astype(self, dtype: Any, order: str = "K", casting: Any = None, subok: Any = None,
               copy: bool = True) -> "ndarray":
        if copy or numpy.dtype(dtype) != self._a.dtype:
            LAUNCHES.launch("copy")
        return ndarray._of(self._a.astype(dtype, order=order, copy=copy))

    def copy(self, order: str = "C") -> "ndarray":
        LAUNCHES.launch("copy")
        return ndarray._of(self._a.copy(order=order))

    def view(self, dtype: Any = None) -> "ndarray":
        return ndarray._of(self._a.view() if dtype is None else self._a.view(dtype))

    def ravel(self, order: str = "C") -> "ndarray":
        return self.reshape(-1, order=order)

    def fill(self, value: Any) -> None:
        LAUNCHES.launch("elementwise")
        self._a.fill(_operand(value))

    def squeeze(self, axis: Any = None) -> "ndarray":
        return ndarray._of(self._a.squeeze(axis=axis))

    def __matmul__(self, other: Any) -> Any:
        return _binary(_product(numpy.matmul), kind="matmul")(self, other)

    def __rmatmul__(self, other: Any) -> Any:
        return _binary(_product(numpy.matmul), reflected=True, kind="matmul")(self, other)

    def __neg__(self) -> "ndarray":
        LAUNCHES.launch("elementwise")
        return ndarray._of(-self._a)

    def __pos__(self) -> "ndarray":
        LAUNCHES.launch("elementwise")
        return ndarray._of(+self._a)

    def __abs__(self) -> "ndarray":
        LAUNCHES.launch("elementwise")
        return ndarray._of(abs(self._a))

    def __invert__(self) -> "ndarray":
        LAUNCHES.launch("elementwise")
        return ndarray._of(~self._a)


def _reduction(name: str) -> Callable:
    kind = _kind(name)

    def method(self: ndarray, *args: Any, **kwargs: Any) -> Any:
        LAUNCHES.launch(kind)
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        return _wrap(getattr(self._a, name)(*_unwrap(args), **kwargs))
    method.__name__ = name
    return method


for _name in ("sum", "mean", "max", "min", "argmax", "argmin", "all", "any", "prod", "var", "std", "cumsum",
              "clip", "take", "repeat", "round"):
    setattr(ndarray, _name, _reduction(_name))
ndarray.dot = lambda self, b, out=None: _device_function(_product(numpy.dot, batched=False), "dot")(self, b, out=out)

for _op, _fn in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                 ("truediv", operator.truediv), ("floordiv", operator.floordiv), ("mod", operator.mod),
                 ("pow", operator.pow), ("and", operator.and_), ("or", operator.or_), ("xor", operator.xor),
                 ("lshift", operator.lshift), ("rshift", operator.rshift)):
    setattr(ndarray, f"__{_op}__", _binary(_fn))
    setattr(ndarray, f"__r{_op}__", _binary(_fn, reflected=True))
for _op, _ufunc in (("iadd", numpy.add), ("isub", numpy.subtract), ("imul", numpy.multiply),
                    ("itruediv", numpy.true_divide), ("ifloordiv", numpy.floor_divide), ("imod", numpy.mod),
                    ("ipow", numpy.power), ("iand", numpy.bitwise_and), ("ior", numpy.bitwise_or),
                    ("ixor", numpy.bitwise_xor)):
    setattr(ndarray, f"__{_op}__", _inplace(_ufunc))
for _op, _fn in (("lt", operator.lt), ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge),
                 ("eq", operator.eq), ("ne", operator.ne)):
    setattr(ndarray, f"__{_op}__", _binary(_fn))
ndarray.__hash__ = None  # type: ignore[assignment]  # arrays with __eq__ are unhashable, as NumPy's and CuPy's


def _capture(fn: Callable) -> Callable:
    """``fn`` recorded into a CUDA graph capture in progress when it launches (fakegraph)."""
    return fakegraph.capturable(fn, LAUNCHES, lambda: _current_stream())


for _name, _value in list(vars(ndarray).items()):  # every method that can launch a kernel
    if callable(_value) and not isinstance(_value, (type, classmethod, staticmethod)) and _name not in (
            "__init__", "__len__", "__array__", "__repr__", "__str__", "__format__", "get"):
        setattr(ndarray, _name, _capture(_value))


# --------------------------------------------------------------------------------------------- functions
def _device_function(fn: Callable, name: str) -> Callable:
    """``fn`` (a NumPy function) taking and returning device arrays; ``out=`` (a device array) is honoured."""
    kind = _kind(name)
    waits = _WAITS.get(name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if waits:
            for what in waits:
                SYNCS.sync(what)
        if kind:
            LAUNCHES.launch(kind)
        out = kwargs.get("out")
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        result = fn(*_unwrap(args), **kwargs)
        if isinstance(out, ndarray) and result is out._a:
            return out
        return _wrap(result)
    wrapper.__name__ = wrapper.__qualname__ = name
    return _capture(wrapper)


def _asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> ndarray:
    if isinstance(a, ndarray):
        return a if dtype is None or numpy.dtype(dtype) == a.dtype else a.astype(dtype)
    fakegraph.check_no_sync("an upload from host memory", HostSyncError)
    SYNCS.uploads += 1
    return ndarray._of(numpy.array(a, dtype=dtype, order=order or "K"))


def _array(a: Any, dtype: Any = None, copy: bool = True, order: str = "K", ndmin: int = 0) -> ndarray:
    if isinstance(a, ndarray):
        return ndarray._of(numpy.array(a._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    fakegraph.check_no_sync("an upload from host memory", HostSyncError)
    SYNCS.uploads += 1
    return ndarray._of(numpy.array(a, dtype=dtype, order=order, ndmin=ndmin))


def _asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> numpy.ndarray:
    if isinstance(a, ndarray):
        return a.get(order=order)
    return numpy.asarray(a, order=order)


def _get_array_module(*args: Any) -> types.ModuleType:
    module = sys.modules.get("cupy")
    return module if any(isinstance(a, ndarray) for a in args) else numpy


def _fuse(*args: Any, **kwargs: Any) -> Callable:
    """cupy.fuse as a decorator with or without arguments; here the function runs op by op, counted as the
    one kernel CuPy compiles it into."""
    def decorate(fn: Callable) -> Callable:
        def fused(*a: Any, **k: Any) -> Any:
            LAUNCHES.launch("kernel")
            with LAUNCHES.one_kernel():
                return fn(*a, **k)
        fused.__name__ = getattr(fn, "__name__", "fused")
        fused.__wrapped__ = fn  # type: ignore[attr-defined]
        return _capture(fused)

    if len(args) == 1 and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


_EMULATIONS: dict[str, Callable] = {}


def emulate_kernel(name: str, function: Callable) -> None:
    """Give the ElementwiseKernel called ``name`` a NumPy implementation: ``function(*numpy_args)`` must write
    the outputs into the NumPy arrays passed for them (as a kernel does) or return them."""
    _EMULATIONS[name] = function


class ElementwiseKernel:
    """CuPy's ElementwiseKernel: runs its own operation (CUDA C of the subset ``fakekernels`` translates), or
    the NumPy emulation registered under its name (see emulate_kernel); one launch per call."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel", **kwargs: Any):
        self.in_params, self.out_params, self.operation, self.name = in_params, out_params, operation, name
        self.preamble = kwargs.get("preamble", "")
        if self.name not in _EMULATIONS:  # refuse what cannot run now, not at the first call
            fakekernels.compile_statements(operation)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        LAUNCHES.launch("kernel")
        with LAUNCHES.one_kernel():
            if self.name in _EMULATIONS:
                return _wrap(_EMULATIONS[self.name](*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))
            if kwargs:
                raise TypeError(f"fakecupy: ElementwiseKernel arguments by keyword: {sorted(kwargs)}")
            return _wrap(fakekernels.elementwise(self.in_params, self.out_params, self.operation,
                                                 _unwrap(tuple(args)), {}))


class ReductionKernel:
    """CuPy's ReductionKernel, running its own map, reduce and post-map expressions (``fakekernels``):
    ``kernel(*args, axis=None, keepdims=False, out=None)``, one launch per call."""

    def __init__(self, in_params: str, out_params: str, map_expr: str, reduce_expr: str, post_map_expr: str,
                 identity: str | None, name: str = "reduce_kernel", reduce_type: str | None = None,
                 reduce_dims: bool = True, preamble: str = "", options: tuple = ()) -> None:
        self.in_params, self.out_params, self.name = in_params, out_params, name
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.identity, self.reduce_type = identity or "0", reduce_type
        for expr in (map_expr, reduce_expr, identity or "0"):
            fakekernels.compile_expression(expr)
        fakekernels.compile_statements(post_map_expr)

    def __call__(self, *args: Any, axis: Any = None, keepdims: bool = False, out: Any = None,
                 stream: Any = None) -> Any:
        LAUNCHES.launch("reduction")
        with LAUNCHES.one_kernel():
            target = None if out is None else out._a
            result = fakekernels.reduction(self, _unwrap(tuple(args)), axis, keepdims, target)
        return out if out is not None else ndarray._of(result)


class RawKernel:
    """CuPy's RawKernel: ``kernel(grid, block, args)`` runs the NumPy emulation registered under its name,
    given the NumPy arrays behind ``args`` (outputs written in place), counted as one launch."""

    def __init__(self, code: str, name: str, options: tuple = (), **kwargs: Any) -> None:
        self.code, self.name, self.options = code, name, options

    def __call__(self, grid: Any, block: Any, args: tuple, **kwargs: Any) -> None:
        if self.name not in _EMULATIONS:
            raise NotImplementedError(f"fakecupy cannot run the CUDA C of RawKernel {self.name!r}; register a "
                                      "NumPy emulation with fakecupy.emulate_kernel()")
        LAUNCHES.launch("kernel")
        with LAUNCHES.one_kernel():
            _EMULATIONS[self.name](*_unwrap(tuple(args)))


for _kernel_class in (ElementwiseKernel, ReductionKernel, RawKernel):
    _kernel_class.__call__ = _capture(_kernel_class.__call__)  # type: ignore[method-assign]


# NumPy functions CuPy 14 offers under the same name and semantics (each checked against CuPy 14.2's namespace).
FUNCTIONS = (
    "abs", "absolute", "add", "all", "any", "arange", "argmax", "argmin", "argsort", "ascontiguousarray",
    "bincount", "broadcast_to", "ceil", "clip", "concatenate", "copyto", "cos", "count_nonzero", "cumsum",
    "divide", "dot", "einsum", "empty", "empty_like", "equal", "exp", "exp2", "expand_dims", "floor",
    "floor_divide", "full", "full_like", "greater", "greater_equal", "isfinite", "isinf", "isnan", "less",
    "less_equal", "linspace", "log", "log1p", "log2", "logical_and", "logical_not", "logical_or", "matmul",
    "max", "maximum", "mean", "min", "minimum", "mod", "moveaxis", "multiply", "negative", "not_equal", "ones",
    "ones_like", "outer", "pad", "power", "prod", "ravel", "reciprocal", "remainder", "repeat", "reshape",
    "rint", "round", "sign", "sin", "sort", "sqrt", "square", "stack", "std", "subtract",
    "sum", "swapaxes", "take", "take_along_axis", "tanh", "tensordot", "tile", "transpose", "true_divide",
    "var", "where", "zeros", "zeros_like", "flip", "squeeze", "isclose", "allclose", "array_equal",
    "histogram", "nonzero", "flatnonzero", "argwhere", "unique", "searchsorted", "cbrt",
)
# NumPy objects CuPy re-exports as they are (dtypes, dtype helpers, constants).
NUMPY_NAMES = (
    "bool_", "int8", "int16", "int32", "int64", "intp", "uint8", "uint16", "uint32", "uint64", "float16",
    "float32", "float64", "complex64", "complex128", "integer", "floating", "signedinteger", "unsignedinteger",
    "number", "inexact", "dtype", "issubdtype", "iinfo", "finfo", "promote_types",
    "newaxis", "pi", "e", "inf", "nan",
)


class _Stream:
    """cupy.cuda.Stream: ``with stream:`` makes it current; capture with begin_capture / end_capture
    (fakegraph)."""

    _made = 0

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False) -> None:
        _Stream._made += 1
        self.ptr = 0 if null else _Stream._made  # 0: the legacy default stream
        self.non_blocking = non_blocking

    def synchronize(self) -> None:
        fakegraph.check_no_sync("stream.synchronize()", HostSyncError)
        SYNCS.synchronizes += 1

    def __enter__(self) -> "_Stream":
        FAKE.streams.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        FAKE.streams.pop()

    def begin_capture(self, mode: Any = None) -> None:
        if self.ptr == 0:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if _current_stream() is not self:
            raise RuntimeError("fakecupy: begin_capture on a stream that is not current: make it current with "
                               "`with stream:` or the work goes elsewhere")
        fakegraph.begin(self)

    def end_capture(self) -> fakegraph.Graph:
        return fakegraph.end(self)

    def is_capturing(self) -> bool:
        return fakegraph.CAPTURE.stream is self

    def record(self, event: Any = None) -> "_Event":
        return event if event is not None else _Event()

    def wait_event(self, event: Any) -> None:
        pass

    def launch_host_func(self, callback: Any, arg: Any) -> None:
        callback(arg)


class _Event:
    def synchronize(self) -> None:
        fakegraph.check_no_sync("event.synchronize()", HostSyncError)
        SYNCS.synchronizes += 1


_NULL_STREAM = _Stream(null=True)


def _current_stream(device: Any = None) -> _Stream:
    return FAKE.streams[-1] if FAKE.streams else _NULL_STREAM


class _Device:
    def __init__(self, device: int = 0) -> None:
        self.id = device

    compute_capability = property(lambda self: FAKE.compute_capability)

    def synchronize(self) -> None:
        fakegraph.check_no_sync("device.synchronize()", HostSyncError)
        SYNCS.synchronizes += 1

    def use(self) -> None:
        pass

    def __enter__(self) -> "_Device":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    mem_info = property(lambda self: (64 << 30, 80 << 30))


class _MemoryPool:
    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_bytes(self) -> int:
        return 0

    def set_limit(self, size: int = 0, fraction: float = 0.0) -> None:
        pass

    def free_all_blocks(self) -> None:
        pass


class _Generator:
    """cupy.random.Generator over a fake bit generator: draws are device arrays."""

    def __init__(self, bit_generator: "_Philox") -> None:
        self.bit_generator = bit_generator
        self._numpy = numpy.random.Generator(numpy.random.Philox(bit_generator.seed))

    def random(self, size: Any = None, dtype: Any = numpy.float64, out: Any = None) -> ndarray:
        dtype = numpy.dtype(dtype)
        LAUNCHES.launch("kernel")
        values = self._numpy.random(() if size is None else size, dtype=numpy.float64 if dtype.char == "d"
                                    else numpy.float32)
        result = ndarray._of(numpy.asarray(values).astype(dtype, copy=False))
        if out is not None:
            out[...] = result
            return out
        return result

    def uniform(self, low: Any = 0.0, high: Any = 1.0, size: Any = None, dtype: Any = numpy.float64) -> ndarray:
        low, high = _operand(low), _operand(high)
        if size is None:
            size = numpy.broadcast(numpy.asarray(low), numpy.asarray(high)).shape
        y = self.random(size, dtype=numpy.float64 if numpy.dtype(dtype).char == "d" else numpy.float32)._a
        return ndarray._of(numpy.asarray(low + (high - low) * y).astype(dtype, copy=False))

    def integers(self, low: int, high: int | None = None, size: Any = None, dtype: Any = numpy.int64,
                 endpoint: bool = False) -> ndarray:
        LAUNCHES.launch("kernel")
        values = self._numpy.integers(low, high, size=size, dtype=dtype, endpoint=endpoint)
        return ndarray._of(numpy.asarray(values))

    def standard_normal(self, size: Any = None, dtype: Any = numpy.float64) -> ndarray:
        LAUNCHES.launch("kernel")
        return ndarray._of(numpy.asarray(self._numpy.standard_normal(size, dtype=dtype)))

    def beta(self, a: Any, b: Any, size: Any = None, dtype: Any = numpy.float64) -> ndarray:
        # CuPy 14: a and b are device arrays or Python floats and ints (uploaded, as cupy.asarray does:
        # counted here), nothing else -- a NumPy float64 is refused.
        shapes = []
        for value in (a, b):
            if not isinstance(value, ndarray) and type(value) not in (float, int):
                raise TypeError("a is required to be a cupy.ndarray or a scalar")
            shapes.append(_asarray(value, numpy.float64)._a)
        LAUNCHES.launch("kernel")
        values = self._numpy.beta(*shapes, size=size)
        return ndarray._of(numpy.asarray(values).astype(dtype, copy=False))


for _name in ("random", "uniform", "integers", "standard_normal", "beta"):
    setattr(_Generator, _name, _capture(getattr(_Generator, _name)))


class _Philox:
    """cupy.random.Philox4x3210(seed=None, *, size=-1): ``size`` states (default: 8 x 256 x the SM count)."""

    DEFAULT_SIZE = 8 * 256 * 132  # what CuPy chooses on an H100 (132 SMs)

    def __init__(self, seed: Any = None, *, size: int = -1) -> None:
        if isinstance(seed, ndarray):
            seed = seed.get()
        self.seed = numpy.random.SeedSequence(seed)
        self.size = self.DEFAULT_SIZE if size < 0 else int(size)
        if self.size % 256:
            raise ValueError(f"fakecupy: Philox4x3210 size {self.size} is not a multiple of 256; CuPy's random "
                             "kernels would read and write states past the end of the allocation")
        FAKE.generators.append(self)


@dataclass
class FakeCupy:
    """Settings and records of the installed fake (``fake.syncs``, ``fake.tf32_calls``, ...)."""

    syncs: HostSyncs = field(default_factory=lambda: SYNCS)
    launches: Launches = field(default_factory=lambda: LAUNCHES)
    device_count: int = 1
    compute_capability: str = "90"
    tf32_calls: list[tuple[str, Any]] = field(default_factory=list)
    compute_type: int = 0  # CuPy's float32 compute type (0: not chosen yet, 1: default, 7: TF32)
    math_mode: int = 0  # the cuBLAS handle's math mode (0: default, 3: TF32 tensor op math)
    generators: list[_Philox] = field(default_factory=list)
    streams: list[Any] = field(default_factory=list)  # the current streams, innermost last
    modules: dict[str, types.ModuleType] = field(default_factory=dict)

    @property
    def cupy(self) -> types.ModuleType:
        return self.modules["cupy"]


FAKE = FakeCupy()


def _build_modules() -> dict[str, types.ModuleType]:
    cp = types.ModuleType("cupy")
    cp.__version__ = "14.2.0+fake"
    cp.ndarray = ndarray
    for name in FUNCTIONS:
        setattr(cp, name, _device_function(getattr(numpy, name), name))
    cp.matmul = _device_function(_product(numpy.matmul), "matmul")
    cp.dot = _device_function(_product(numpy.dot, batched=False), "dot")
    cp.tensordot = _device_function(_product(numpy.tensordot, batched=False), "tensordot")
    for name in NUMPY_NAMES:
        setattr(cp, name, getattr(numpy, name))
    cp.asarray, cp.array, cp.asnumpy = _asarray, _array, _asnumpy
    cp.get_array_module = _get_array_module
    cp.fuse = _fuse
    cp.ElementwiseKernel = ElementwiseKernel
    cp.RawKernel = RawKernel
    cp.ReductionKernel = ReductionKernel
    cp.get_default_memory_pool = lambda: _MemoryPool()
    cp.get_default_pinned_memory_pool = lambda: _MemoryPool()

    random = types.ModuleType("cupy.random")
    random.Generator = _Generator
    random.Philox4x3210 = _Philox
    random.default_rng = lambda seed=None: _Generator(_Philox(seed))  # CuPy's default is XORWOW; same API
    cp.random = random

    cuda = types.ModuleType("cupy.cuda")
    cuda.get_current_stream = _current_stream
    cuda.Stream = _Stream
    cuda.Event = _Event
    cuda.Graph = fakegraph.Graph
    cuda.Device = _Device
    cuda.get_device_id = lambda: 0
    cuda.is_available = lambda: FAKE.device_count > 0
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.getDeviceCount = lambda: FAKE.device_count
    runtime.runtimeGetVersion = lambda: 12080
    runtime.driverGetVersion = lambda: 12080
    runtime.getDeviceProperties = lambda device: {
        "name": b"fakecupy CPU device", "totalGlobalMem": 80 << 30, "multiProcessorCount": 132,
        "major": int(FAKE.compute_capability[:-1]), "minor": int(FAKE.compute_capability[-1])}
    runtime.is_hip = False
    runtime.memGetInfo = lambda: (64 << 30, 80 << 30)  # (free, total) bytes of the current device
    cuda.runtime = runtime
    device = types.ModuleType("cupy.cuda.device")
    device.get_cublas_handle = lambda: 1
    device.Device = _Device
    cuda.device = device
    cublas = types.ModuleType("cupy.cuda.cublas")
    cublas.CUBLAS_DEFAULT_MATH, cublas.CUBLAS_TENSOR_OP_MATH = 0, 1

    def set_math_mode(handle: int, mode: int) -> None:
        FAKE.tf32_calls.append(("setMathMode", mode))
        FAKE.math_mode = mode

    cublas.setMathMode = set_math_mode
    cuda.cublas = cublas
    cp.cuda = cuda

    nccl = types.ModuleType("cupy.cuda.nccl")  # CuPy 14's binding (cupy_backends/cuda/libs/nccl.pyx), one rank
    nccl.available = True
    nccl.NCCL_FLOAT16, nccl.NCCL_FLOAT32, nccl.NCCL_FLOAT64, nccl.NCCL_SUM = 6, 7, 8, 0
    nccl.get_version = lambda: 22707
    nccl.get_unique_id = lambda: bytes(numpy.random.default_rng().integers(0, 256, 128, dtype=numpy.uint8))

    class NcclCommunicator:
        """``NcclCommunicator(int ndev, bytes commId, int rank)``: a tuple id is a TypeError, as in CuPy 14."""

        def __init__(self, ndev: int, commId: bytes, rank: int) -> None:  # noqa: N803 -- CuPy's name
            if not isinstance(commId, bytes):
                raise TypeError(f"Argument 'commId' has incorrect type (expected bytes, got {type(commId).__name__})")
            if len(commId) != 128:
                raise ValueError(f"commId length {len(commId)} != 128.")
            if ndev != 1 or rank != 0:
                raise NotImplementedError("fakecupy's NCCL has one rank")

        def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int,  # noqa: N802
                      stream: int) -> None:
            LAUNCHES.launch("kernel")  # one rank: the sum is the buffer itself

        def abort(self) -> None:
            pass

    NcclCommunicator.allReduce = _capture(NcclCommunicator.allReduce)
    nccl.NcclCommunicator = NcclCommunicator
    cuda.nccl = nccl

    core = types.ModuleType("cupy._core")
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_TF32 = 1, 7  # _routines_linalg.pxd
    core._routines_linalg = linalg

    def set_compute_type(dtype: Any, compute_type: int) -> None:
        FAKE.tf32_calls.append((f"set_compute_type({numpy.dtype(dtype).name})", compute_type))
        if numpy.dtype(dtype) == numpy.float32:
            FAKE.compute_type = compute_type

    core.set_compute_type = set_compute_type
    cp._core = core

    cupyx = types.ModuleType("cupyx")

    def scatter_add(a: ndarray, slices: Any, value: Any) -> None:
        """cupyx.scatter_add: an atomic add per element, one kernel, no host read."""
        LAUNCHES.launch("kernel")
        numpy.add.at(a._a, _index(slices), _operand(value))

    cupyx.scatter_add = _capture(scatter_add)
    scipy_mod = types.ModuleType("cupyx.scipy")
    special = types.ModuleType("cupyx.scipy.special")
    for name in ("erf", "erfc", "ndtr", "log_ndtr"):
        setattr(special, name, _device_function(getattr(scipy.special, name), name))
    ndimage = types.ModuleType("cupyx.scipy.ndimage")
    for name in ("map_coordinates", "affine_transform"):
        setattr(ndimage, name, _device_function(getattr(scipy.ndimage, name), name))
    scipy_mod.special, scipy_mod.ndimage = special, ndimage
    cupyx.scipy = scipy_mod
    modules = (cp, random, cuda, runtime, device, cublas, nccl, core, linalg, cupyx, scipy_mod, special, ndimage)
    return dict(zip(_module_names(), modules))


_SAVED: list[tuple[dict[str, Any], Any, dict[str, types.ModuleType], bool]] = []


def _module_names() -> list[str]:
    return ["cupy", "cupy.random", "cupy.cuda", "cupy.cuda.runtime", "cupy.cuda.device", "cupy.cuda.cublas",
            "cupy.cuda.nccl",
            "cupy._core", "cupy._core._routines_linalg", "cupyx", "cupyx.scipy", "cupyx.scipy.special",
            "cupyx.scipy.ndimage"]


def install() -> FakeCupy:
    """Put a fresh fake in sys.modules (see the module docstring), strict, with its records cleared;
    ``uninstall()`` restores what was there before (installs nest)."""
    import npvit.backend as backend

    _SAVED.append(({name: sys.modules.get(name) for name in _module_names()}, backend._BACKENDS.pop("cupy", None),
                   FAKE.modules, SYNCS.strict))
    FAKE.modules = _build_modules()
    FAKE.tf32_calls.clear()
    FAKE.generators.clear()
    FAKE.device_count, FAKE.compute_capability, FAKE.compute_type, FAKE.math_mode = 1, "90", 0, 0
    SYNCS.strict = True
    SYNCS.reset()
    LAUNCHES.reset()
    LAUNCHES.depth = 0
    FAKE.streams.clear()
    fakegraph.CAPTURE.stream, fakegraph.CAPTURE.depth, fakegraph.CAPTURE.calls = None, 0, []
    fakegraph.Graph.unwrap = staticmethod(lambda x: x._a if isinstance(x, ndarray) else x)
    fakegraph.Graph.launches = LAUNCHES
    sys.modules.update(FAKE.modules)
    return FAKE


def uninstall() -> None:
    """Undo the last install()."""
    import npvit.backend as backend

    fake_module = FAKE.modules.get("cupy")
    for key in [k for k in backend._CONSTANTS if k[0] is fake_module]:
        del backend._CONSTANTS[key]
    saved_modules, saved_backend, FAKE.modules, SYNCS.strict = _SAVED.pop()
    for name, module in saved_modules.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
    backend._BACKENDS.pop("cupy", None)
    if saved_backend is not None:
        backend._BACKENDS["cupy"] = saved_backend


@pytest.fixture
def fake_cupy() -> Iterator[FakeCupy]:
    """The fake CuPy, installed for one test (strict: any implicit host sync raises HostSyncError)."""
    fake = install()
    try:
        yield fake
    finally:
        uninstall()


@pytest.fixture
def host_syncs(fake_cupy: FakeCupy) -> HostSyncs:
    """The counters of the installed fake CuPy, reset: ``gets``, ``uploads``, ``synchronizes``, ``sites``
    (with ``recording()``) -- what a test of a training step asserts on."""
    fake_cupy.syncs.reset()
    return fake_cupy.syncs


def to_fake(a: Any, dtype: Any = None) -> ndarray:
    """A host array as a fake device array, without counting an upload (test setup)."""
    return ndarray._of(numpy.array(a, dtype=dtype))


def from_fake(a: Any) -> Any:
    """A fake device array's values on the host, without counting a copy (test checks)."""
    if isinstance(a, ndarray):
        return a._a.copy()
    if isinstance(a, (tuple, list)):
        return type(a)(from_fake(v) for v in a)
    if isinstance(a, dict):
        return {k: from_fake(v) for k, v in a.items()}
    return a
