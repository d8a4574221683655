"""Thread counts of the benchmark processes.

Thread pools read their variables when their library loads, so these are set before NumPy and torch are
imported: this module imports neither (``run.py`` imports it first).
"""

from __future__ import annotations

import os

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def default_threads() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def requested_threads(argv: list[str]) -> int:
    """--threads N from the command line, else OMP_NUM_THREADS, else every CPU this process may use."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--threads" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--threads=") else None)
        if value is not None:
            try:
                return max(1, int(value))
            except ValueError:
                break  # argparse reports it
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return default_threads()


def set_thread_env(threads: int, torch_thp: bool = False) -> None:
    """Write ``threads`` to every variable of ``THREAD_VARS``; with ``torch_thp`` let torch's CPU allocator use
    transparent huge pages. Effective only before NumPy and torch are imported."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    if torch_thp:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # read by torch's CPU allocator
