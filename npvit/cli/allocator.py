"""Keeping freed memory inside the process, so that NumPy's large temporaries stop costing page faults.

A training step allocates and frees the same large arrays (activations, their gradients, attention scores)
hundreds of times. glibc's malloc serves an allocation above its mmap threshold (128 KiB at first, raised
as large blocks are freed, up to 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` when it is
freed; it also returns the free top of a heap to the kernel once it exceeds the trim threshold. Either way
the next step's array lands on pages the kernel must fault in and zero again: with the fast recipe's
width-64 model on 2 cores, a third of the CPU time went to the kernel (``top``: 33% sy).

``keep_freed_memory`` tells malloc to keep that memory: every block below 2 GB comes from a heap, a heap
grows by 512 MiB of address space at a time (pages the process never touches cost nothing), and freed heap
memory is not given back. The process's resident size then stays at its peak instead of breathing with
every step, which is what a training process does anyway. Measured on the 2-core VM, the width-64 fast model
trained at 430 images/s before and 541-585 after; each setting alone did not help, the three together did
(``benchmarks/NOTES.md``, entry 18).

This is host-process tuning for the NumPy backend. ``python -m npvit.train`` calls it; code that runs its own
training loop may call it once at start. It is never called on import: a library must not change its host's
allocator behind its back. It does nothing where the C library is not
glibc (macOS, musl) and says so by returning False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

# mallopt takes a C int, so 2**31 - 1 is the largest value
SETTINGS = (
    (M_MMAP_THRESHOLD, 2_000_000_000),  # blocks below 2 GB come from a heap, not a fresh mmap
    (M_TRIM_THRESHOLD, 2**31 - 1),  # give free heap top back only past 2 GiB
    (M_TOP_PAD, 512 * 1024 * 1024),  # grow a heap by 512 MiB of address space at a time
)

_DONE: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse instead of returning them to the kernel.

    Returns True where the settings took effect (glibc), False elsewhere. Safe to call more than once; only
    the first call acts.
    """
    global _DONE
    if _DONE is None:
        _DONE = all([_mallopt(param, value) for param, value in SETTINGS])
    return _DONE


def _mallopt(param: int, value: int) -> bool:
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(param, value))
