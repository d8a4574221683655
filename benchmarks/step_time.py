"""Time one training step of a preset model: forward, loss, backward and AdamW, on random data.

    python benchmarks/step_time.py                                  # Keras preset, batch 256, NumPy float32
    python benchmarks/step_time.py --preset small --batch 128 --repeats 5
    python benchmarks/step_time.py --backend cupy
    NPVIT_KERNELS=numpy python benchmarks/step_time.py --preset fast --batch 128   # the NumPy kernels

Prints a markdown table (median of the repeats after one warm-up step) and, with --json, writes the
numbers. Thread count follows the BLAS defaults; set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS to change it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import numpy as np

import npvit
from npvit.demo import PRESETS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The suite's FLOP counts and phase timer; both import nothing of npvit beyond ViTConfig, so that ab.py can run
# this file against older checkouts.
from suite.flops import matmul_flops_per_image  # noqa: E402
from suite.timing import time_phases  # noqa: E402


def kernel_line() -> str:
    """Which kernels ran (npvit.kernels.compiled); checkouts older than the compiled tier: numpy."""
    try:
        from npvit.kernels.compiled import describe
    except ImportError:
        return "kernels: numpy"
    return describe()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="keras")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    backend = npvit.get_backend(args.backend)
    cfg = PRESETS[args.preset](num_classes=args.num_classes)
    model = npvit.ViT(cfg, backend=backend, dtype=args.dtype)
    opt = npvit.AdamW(model.params)
    rng = np.random.default_rng(0)
    images = backend.asarray(rng.standard_normal((args.batch, cfg.image_size, cfg.image_size, cfg.channels)),
                             dtype=args.dtype)
    labels = backend.asarray(rng.integers(0, cfg.num_classes, args.batch))

    def loss_backward(logits):
        return model.backward(npvit.cross_entropy_backward(npvit.cross_entropy_forward(logits, labels)[1]))

    rows: dict[str, list[float]] = {"forward (eval)": [], "forward (train)": [], "backward": [], "AdamW": []}
    for i in range(args.repeats + 1):
        times = time_phases(backend.synchronize, [("forward (eval)", lambda _: model.forward(images))],
                            breakdown=True)
        times.update(time_phases(backend.synchronize, [
            ("forward (train)", lambda _: model.forward(images, training=True)),
            ("backward", loss_backward),
            ("AdamW", lambda _: opt.step(model.grads)),
        ], breakdown=True))
        if i:  # the first round warms up allocators and caches
            for key in rows:
                rows[key].append(times[key])

    med = {k: statistics.median(v) for k, v in rows.items()}
    step = med["forward (train)"] + med["backward"] + med["AdamW"]
    flops = matmul_flops_per_image(cfg) * args.batch
    print(f"npvit {npvit.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, backend {backend.name}, "
          f"{args.dtype}, {kernel_line()}")
    print(f"preset {args.preset}: {model.num_params():,} parameters, batch {args.batch}, "
          f"{flops / args.batch / 1e9:.3f} GFLOP forward per image, median of {args.repeats}\n")
    print("| part | seconds | images/s | GFLOP/s |")
    print("|---|---:|---:|---:|")
    print(f"| forward (eval) | {med['forward (eval)']:.3f} | {args.batch / med['forward (eval)']:.1f} | "
          f"{flops / med['forward (eval)'] / 1e9:.1f} |")
    print(f"| forward (train) | {med['forward (train)']:.3f} | | |")
    print(f"| backward | {med['backward']:.3f} | | |")
    print(f"| AdamW | {med['AdamW']:.3f} | | |")
    print(f"| training step | {step:.3f} | {args.batch / step:.1f} | {3 * flops / step / 1e9:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "batch": args.batch, "backend": backend.name, "dtype": args.dtype,
                       "seconds": med, "step_seconds": step, "npvit": npvit.__file__}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
