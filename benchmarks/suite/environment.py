"""The machine, the libraries and their thread counts, for the header of every run and its JSON."""

from __future__ import annotations

import os
import platform
import shlex
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

import npvit
from npvit.kernels.compiled import describe as kernel_description

from . import RUN_PY
from .context import DTYPE, Ctx
from .peer import torch
from .threads import THREAD_VARS, default_threads


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def proc_kb(path: str, field_name: str) -> int:
    """A "Name:  value kB" field of a /proc file such as /proc/self/status or /proc/meminfo."""
    with open(path) as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def mem_total_gib() -> float | None:
    try:
        return proc_kb("/proc/meminfo", "MemTotal") / 1024**2
    except (OSError, KeyError):
        return None


def openblas_threads() -> dict[str, int]:
    """Thread count of every OpenBLAS loaded in this process, asked through its C API."""
    import ctypes

    found: dict[str, int] = {}
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return found
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                    "openblas_get_num_threads64_", "openblas_get_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                found[Path(path).name] = int(fn())
                break
    return found


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def _numpy_madvise_hugepage() -> bool | None:
    """Whether NumPy asks for transparent huge pages for its large arrays (it does by default on Linux)."""
    try:
        return bool(np._core.multiarray._get_madvise_hugepage())
    except AttributeError:
        return None


def version_of(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(ctx: Ctx, argv: list[str]) -> dict:
    import scipy

    env: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(RUN_PY)] + argv),
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": default_threads(),
        "memory_gib": mem_total_gib(), "load_average_start": list(os.getloadavg()),
        "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
        "npvit": npvit.__version__, "torch": torch.__version__ if torch is not None else None,
        "cupy": version_of("cupy") or version_of("cupy-cuda12x") or version_of("cupy-cuda13x"),
        "backend": ctx.backend.name, "dtype": DTYPE, "threads": ctx.threads,
        "thread_env": {v: os.environ.get(v) for v in THREAD_VARS},
        "openblas_threads": openblas_threads(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "torch_peer": ctx.torch_device or f"none ({ctx.torch_note})", "tf32": ctx.tf32,
        "torch_thp_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        "numpy_hugepage_madvise": _numpy_madvise_hugepage(),
        "thp_mode": _read_first_line("/sys/kernel/mm/transparent_hugepage/enabled"),
        "settings": {k: v for k, v in ctx.settings.__dict__.items()},
        "npvit_kernels": kernel_description(),
    }
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        env["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        env["numpy_blas"] = None
    if torch is not None:
        info = torch.__config__.show()
        env["torch_blas"] = next((p.split("=")[1] for p in info.replace(",", " ").split()
                                  if p.startswith("BLAS_INFO=")), None)
    if ctx.backend.name == "cupy":
        cp = ctx.xp
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        env["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        env["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        env["CUPY_TF32"] = os.environ.get("CUPY_TF32")
        if ctx.torch_device:
            env["torch_cuda"] = torch.version.cuda
            env["torch_allow_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                       "cudnn": torch.backends.cudnn.allow_tf32}
    return env
