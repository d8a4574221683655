"""CUDA stream capture and graph replay for the fake CuPy (tests/support/fakecupy.py).

What CUDA does, and the fake therefore does:

* ``stream.begin_capture()`` on a non-default stream (``cupy.cuda.Stream(non_blocking=True)``), made current
  with ``with stream:``; the legacy default stream refuses, as CuPy does.
* Work launched during the capture is recorded, not executed: the fake must run it to learn the shapes, so
  it snapshots every live device buffer at ``begin_capture`` and puts them back at ``end_capture``; buffers
  made during the capture are filled with NaN (their contents are undefined until the graph runs).
* A host synchronisation during the capture -- an implicit read, ``.get()``, an upload from host memory, a
  stream or device synchronize -- raises HostSyncError (CUDA invalidates the capture: "operation not
  permitted when stream is capturing"), strict mode or not. Launching on another stream raises too.
* ``end_capture()`` returns a graph; ``graph.launch()`` replays every recorded call, in order, on the buffers
  captured (the same addresses, as a CUDA graph's kernels keep their pointer arguments), with the scalars of
  the capture (a graph's kernel arguments are fixed): results land in the arrays the capture returned. One
  launch is counted, kind "graph".

The recording is at the level of CuPy calls: every fake function, method, fused function and kernel call
that launches is recorded once (calls inside it are not).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy

LIVE: "weakref.WeakValueDictionary[int, numpy.ndarray]" = weakref.WeakValueDictionary()


def track(a: numpy.ndarray) -> None:
    """Remember the buffer that ``a`` (a device array's data) lives in."""
    if not isinstance(a, numpy.ndarray):
        return
    root = a
    while isinstance(root.base, numpy.ndarray):
        root = root.base
    LIVE[id(root)] = root


@dataclass
class Capture:
    """The capture in progress, if any."""

    stream: Any = None  # the capturing stream
    calls: list[tuple[Callable, tuple, dict, Any]] = field(default_factory=list)
    depth: int = 0  # > 0 inside a recorded call (its own calls are part of it) or a replay
    snapshot: list[tuple[Any, numpy.ndarray]] = field(default_factory=list)
    known: set[int] = field(default_factory=set)


CAPTURE = Capture()


def check_no_sync(what: str, error: type) -> None:
    """Raise ``error`` when a host synchronisation happens inside a capture."""
    if CAPTURE.stream is not None:
        raise error(f"{what} during a CUDA graph capture: a host synchronisation is not permitted while a "
                    "stream is capturing (CUDA invalidates the capture)")


def capturable(fn: Callable, launches: Any, current_stream: Callable[[], Any]) -> Callable:
    """``fn`` recorded into the capture in progress when it launches a kernel."""
    def call(*args: Any, **kwargs: Any) -> Any:
        if CAPTURE.stream is None or CAPTURE.depth:
            return fn(*args, **kwargs)
        before = launches.serial
        CAPTURE.depth += 1
        try:
            result = fn(*args, **kwargs)
        finally:
            CAPTURE.depth -= 1
        if launches.serial != before:
            if current_stream() is not CAPTURE.stream:
                raise RuntimeError("a kernel launched on another stream while a stream is capturing (CUDA: "
                                   "cudaErrorStreamCaptureImplicit); launch inside `with stream:`")
            CAPTURE.calls.append((fn, args, kwargs, result))
        return result
    call.__name__ = getattr(fn, "__name__", "call")
    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def begin(stream: Any) -> None:
    if CAPTURE.stream is not None:
        raise RuntimeError("a stream is already capturing")
    CAPTURE.stream, CAPTURE.calls, CAPTURE.depth = stream, [], 0
    CAPTURE.snapshot = [(weakref.ref(root), root.copy()) for root in list(LIVE.values())]
    CAPTURE.known = set(LIVE.keys())


def end(stream: Any) -> "Graph":
    if CAPTURE.stream is not stream:
        raise RuntimeError("end_capture on a stream that is not capturing")
    for ref, saved in CAPTURE.snapshot:  # the captured work did not run
        root = ref()
        if root is not None:
            root[...] = saved
    for key, root in list(LIVE.items()):  # made during the capture: undefined until the graph runs
        if key not in CAPTURE.known and root.dtype.kind in "fc":
            root[...] = numpy.nan
    graph = Graph(list(CAPTURE.calls))
    CAPTURE.stream, CAPTURE.calls, CAPTURE.snapshot, CAPTURE.known = None, [], [], set()
    return graph


def _copy_into(captured: Any, result: Any, unwrap: Callable[[Any], Any]) -> None:
    if isinstance(captured, (tuple, list)) and isinstance(result, (tuple, list)):
        for c, r in zip(captured, result):
            _copy_into(c, r, unwrap)
        return
    a, b = unwrap(captured), unwrap(result)
    if isinstance(a, numpy.ndarray) and isinstance(b, numpy.ndarray) and a is not b:
        numpy.copyto(a, b)


class Graph:
    """cupy.cuda.Graph of the fake: the calls of one capture, replayed by ``launch``."""

    unwrap: Callable[[Any], Any] = staticmethod(lambda x: x)
    launches: Any = None

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def upload(self, stream: Any = None) -> None:
        pass

    def launch(self, stream: Any = None) -> None:
        if CAPTURE.stream is not None:
            raise RuntimeError("fakecupy: a graph launched while a stream is capturing")
        self.launches.launch("graph")
        self.launches.depth += 1
        CAPTURE.depth += 1
        try:
            for fn, args, kwargs, captured in self.calls:
                _copy_into(captured, fn(*args, **kwargs), self.unwrap)
        finally:
            CAPTURE.depth -= 1
            self.launches.depth -= 1
