"""Timers shared by the benchmark scripts: no NumPy, npvit or torch here, only the clock.

* ``alternate``: contenders run in turn (a, b, a, b, ...), every sample kept, with the CPU time and page faults
  of each call;
* ``loop_pair`` and ``kernel_contender``: seconds per call of a (forward, backward) pair;
* ``time_phases``: the phases of one training step (forward, loss, backward, optimizer), synchronised.

Every timer takes a ``sync`` callable that waits for the device (a no-op on the CPU).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

try:
    import resource
except ImportError:  # not Unix: no CPU-time and page-fault counts
    resource = None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def process_usage() -> tuple[float, float, int]:
    """(user CPU s, system CPU s, minor page faults) of this process so far, all threads."""
    if resource is None:
        return 0.0, 0.0, 0
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def alternate(
    contenders: dict[str, Callable[[], dict[str, float]]], warmup: int, repeats: int, pause: float = 0.0
) -> dict[str, dict[str, list[float]]]:
    """Run the contenders in turn (a, b, c, a, b, c, ...) ``warmup + repeats`` times; keep the last ``repeats``.

    Each contender returns a dict of timings (seconds); the result maps contender -> timing name -> samples.
    Every sample also records the process's user and system CPU seconds and minor page faults during the
    call (``cpu_user_s``, ``cpu_sys_s``, ``minor_faults``): large system time means the measurement paid for
    fresh memory (page faults), not arithmetic.
    ``pause`` seconds pass before each turn: OpenBLAS worker threads spin for about 0.1 s after a call, and
    torch's OpenMP threads briefly too; on a small machine they would steal cores from the next contender
    (measured: torch 2.5x slower right after a NumPy matmul).
    """
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in contenders}
    for i in range(warmup + repeats):
        for name, fn in contenders.items():
            if pause:
                time.sleep(pause)
            before = process_usage()
            result = fn()
            after = process_usage()
            result = dict(result, cpu_user_s=after[0] - before[0], cpu_sys_s=after[1] - before[1],
                          minor_faults=after[2] - before[2])
            if i >= warmup:
                for key, value in result.items():
                    samples[name].setdefault(key, []).append(value)
    return samples


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {k: median(v) for k, v in samples.items()}


def usage(samples: dict[str, list[float]]) -> dict[str, float]:
    """Median CPU user/system seconds and minor page faults per sample."""
    return {k: median(samples.get(k, [])) for k in ("cpu_user_s", "cpu_sys_s", "minor_faults")}


def loop_pair(fwd: Callable[[], Any], bwd: Callable[[Any], Any] | None, k: int,
              sync: Callable[[], None]) -> dict[str, float]:
    """Seconds per call of ``fwd`` (k calls), then of ``bwd`` on the last forward's output (k calls)."""
    sync()
    t0 = time.perf_counter()
    state = None
    for _ in range(k):
        state = None  # free the previous output first, as a training loop would
        state = fwd()
    sync()
    t1 = time.perf_counter()
    if bwd is not None:
        for _ in range(k):
            bwd(state)
        sync()
    t2 = time.perf_counter()
    return {"fwd": (t1 - t0) / k, "bwd": (t2 - t1) / k if bwd is not None else math.nan}


def kernel_contender(setup: Callable[[], tuple], sync: Callable[[], None], target_s: float) -> Callable:
    """A contender timing a (fwd, bwd) pair; its first call (a warm-up) sets how many calls make a sample."""
    fwd, bwd = setup()
    inner = {"k": 0}

    def run() -> dict[str, float]:
        if not inner["k"]:
            result = loop_pair(fwd, bwd, 1, sync)
            once = result["fwd"] + (0.0 if bwd is None else result["bwd"])
            inner["k"] = int(min(200, max(1, target_s // max(once, 1e-7))))
            return result
        return loop_pair(fwd, bwd, inner["k"], sync)

    return run


def time_phases(sync: Callable[[], None], phases: list[tuple[str, Callable[[Any], Any]]],
                breakdown: bool) -> dict[str, float]:
    """Run the (name, fn) phases of one training step in order, each fn given the previous one's result.

    Returns {"step": seconds}, plus one entry per phase with ``breakdown`` (the device is then synchronised
    after every phase, which costs a little on a GPU; without it only at the end).
    """
    sync()
    start = last = time.perf_counter()
    times: dict[str, float] = {}
    result: Any = None
    for i, (name, fn) in enumerate(phases):
        result = fn(result)
        if breakdown or i == len(phases) - 1:
            sync()
        now = time.perf_counter()
        times[name], last = now - last, now
    return dict(times, step=last - start) if breakdown else {"step": last - start}
