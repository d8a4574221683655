"""The command line of the suite (``python benchmarks/run.py``): options, the context they make, the chosen
sections measured and printed in order, and the JSON file of every sample.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

import npvit
from npvit.cli.allocator import keep_freed_memory
from npvit.demo import PRESETS

from . import BENCHMARKS, DESCRIPTION
from .context import SECTIONS, SETTINGS, Ctx
from .e2e import section_e2e
from .environment import environment
from .kernels import section_kernels
from .memory import memory_probe
from .peak import section_peak
from .peer import torch
from .seqlen import section_seqlen
from .tables import print_e2e, print_header, print_kernels, print_peak, print_seqlen, spread_report
from .threads import requested_threads


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(obj) or math.isinf(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def build_ctx(args: argparse.Namespace) -> Ctx:
    if args.backend == "cupy":
        os.environ["CUPY_TF32"] = "1" if args.tf32 else "0"  # read by CuPy at its first float32 matmul
    backend = npvit.get_backend(args.backend)
    gpu = args.backend == "cupy"
    settings = SETTINGS[("gpu" if gpu else "cpu", "quick" if args.quick else "full")]
    if args.repeats:
        settings = replace(settings, kernel_repeats=args.repeats, e2e_repeats=args.repeats,
                           seq_repeats=args.repeats, peak_repeats=args.repeats)
    if args.e2e:
        settings = replace(settings, e2e=args.e2e)
    device, note = None, ""
    if torch is None:
        note = "torch is not installed"
    elif args.no_torch:
        note = "--no-torch"
    elif gpu and not torch.cuda.is_available():
        note = "torch has no CUDA device"
    else:
        device = "cuda" if gpu else "cpu"
        torch.set_num_threads(args.threads)
        if gpu:
            torch.backends.cuda.matmul.allow_tf32 = args.tf32
            torch.backends.cudnn.allow_tf32 = args.tf32
    return Ctx(backend=backend, settings=settings, threads=args.threads, torch_device=device, torch_note=note,
               sdpa=args.sdpa and device is not None, compile=args.compile, numpy_kernels=args.numpy_kernels,
               memory=not args.no_memory, tf32=args.tf32,
               verbose=not args.memory_probe)


def e2e_rows(text: str) -> dict[str, tuple[int, ...]]:
    """Parse --e2e: "keras:256,small:128" -> {"keras": (256,), "small": (128,)}."""
    rows: dict[str, tuple[int, ...]] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        preset, _, batch = item.partition(":")
        if preset not in PRESETS or not batch.isdigit() or int(batch) < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected PRESET:BATCH with PRESET one of {', '.join(sorted(PRESETS))} and a positive "
                "batch, e.g. keras:256")
        rows[preset] = rows.get(preset, ()) + (int(batch),)
    if not rows:
        raise argparse.ArgumentTypeError("expected at least one PRESET:BATCH, e.g. keras:256")
    return rows


def kernel_row(text: str) -> tuple[str, int]:
    """Parse --kernels: "fast:128" -> ("fast", 128)."""
    rows = e2e_rows(text)
    if len(rows) != 1 or len(next(iter(rows.values()))) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one PRESET:BATCH, e.g. fast:128")
    preset, (batch,) = next(iter(rows.items()))
    return preset, batch


def default_json_path(backend: str, quick: bool) -> Path:
    return BENCHMARKS / "results" / f"{datetime.now():%Y-%m-%d}-{backend}{'-quick' if quick else ''}.json"


def kernels_section(row: tuple[str, int] | None) -> Callable[[Ctx], dict]:
    """The kernels section of --kernels PRESET:BATCH (10 classes but for the Keras presets' 100), or its default."""
    if row is None:
        return section_kernels
    preset, batch = row
    cfg = PRESETS[preset](num_classes=100 if preset.startswith("keras") else 10)
    return lambda ctx: section_kernels(ctx, cfg, batch, label=f"{preset} preset")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats (a few minutes)")
    parser.add_argument("--threads", type=int, default=requested_threads(argv),
                        help="threads for BLAS/OpenMP and torch (default: OMP_NUM_THREADS or all usable CPUs)")
    parser.add_argument("--json", help="where to write the results (default benchmarks/results/<date>-<backend>"
                                       "[-quick].json)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    parser.add_argument("--repeats", type=int, help="measured repeats per row, overriding the defaults")
    parser.add_argument("--e2e", type=e2e_rows, metavar="PRESET:BATCH[,...]",
                        help="end-to-end rows to time instead of the defaults, e.g. keras:256 or "
                             "keras:128,keras:256")
    parser.add_argument("--kernels", type=kernel_row, metavar="PRESET:BATCH",
                        help="the model and batch of the kernels section (default: the Keras preset at the "
                             "section's batch), e.g. fast:128 for the fast recipe's training step")
    parser.add_argument("--tf32", action="store_true", help="GPU: allow TF32 matmuls in both CuPy and torch")
    parser.add_argument("--sdpa", action="store_true",
                        help="also time torch with F.scaled_dot_product_attention (e2e and seqlen)")
    parser.add_argument("--compile", action="store_true",
                        help="e2e: also time torch.compile of the PyTorch model (compiles in the warm-up rounds)")
    parser.add_argument("--numpy-kernels", action="store_true",
                        help="e2e: also time npvit on its NumPy kernels (npvit-numpy) beside the default tier")
    parser.add_argument("--no-torch", action="store_true", help="time npvit alone")
    parser.add_argument("--torch-thp", action="store_true",
                        help="CPU: let torch's allocator use transparent huge pages (THP_MEM_ALLOC_ENABLE=1), "
                             "as NumPy does by default for large arrays; fewer page faults for torch")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="set glibc's malloc as python -m npvit.train sets it (npvit.cli.allocator, "
                             "benchmarks/NOTES.md entry 18): freed memory kept for reuse, for the whole process, "
                             "so for torch too")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.threads < 1:
        parser.error("--threads must be positive")

    if args.keep_freed_memory and not keep_freed_memory():
        ctx_note = "warning: --keep-freed-memory: this C library refused the malloc settings"
        print(ctx_note, file=sys.stderr)
    try:
        ctx = build_ctx(args)
    except npvit.BackendUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.memory_probe:
        print(json.dumps(jsonable(memory_probe(json.loads(args.memory_probe), ctx))))
        return 0

    env = environment(ctx, argv)
    blas = env["openblas_threads"]
    if ctx.backend.name == "numpy" and blas and args.threads not in blas.values():
        ctx.log(f"warning: OpenBLAS runs {env['openblas_threads']} threads, not {args.threads}: was NumPy imported "
                "before the thread variables were set? Run this file as a script.")
    print_header(env)
    results: dict[str, Any] = {"environment": env}
    peers = list(ctx.peers)
    start = time.perf_counter()
    shows: dict[str, tuple[Callable[[Ctx], dict], Callable[[dict], None]]] = {
        "peak": (section_peak, print_peak),
        "kernels": (kernels_section(args.kernels), print_kernels),
        "e2e": (section_e2e, lambda res: print_e2e(res, list(ctx.e2e_peers))),
        "seqlen": (section_seqlen, lambda res: print_seqlen(res, peers)),
    }
    wanted = set(sections) | ({"peak"} if {"e2e", "seqlen"} & set(sections) else set())  # their utilisation
    for name in SECTIONS:  # in this order: the peak first
        if name in wanted:
            measure, show = shows[name]
            results[name] = measure(ctx)
            show(results[name])
            sys.stdout.flush()
    noisy = spread_report(results)
    results["noisy"] = noisy
    if noisy:
        print(f"Noisy measurements (max/min of the samples above 1.5; the medians are reported): {len(noisy)}: "
              + "; ".join(noisy) + "\n")
    env["load_average_end"] = list(os.getloadavg())
    env["wall_seconds"] = time.perf_counter() - start
    print(f"Load average at the end: {', '.join(f'{x:.2f}' for x in env['load_average_end'])}; "
          f"wall time {env['wall_seconds']:.0f} s.")
    path = Path(args.json) if args.json else default_json_path(ctx.backend.name, args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(results), indent=1))
    print(f"Results written to {path}")
    return 0
