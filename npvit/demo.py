"""A short demonstration: a few AdamW training steps of a preset model on random data, printing the loss.

    python -m npvit.demo                              # small preset, batch 32, 3 steps, NumPy
    python -m npvit.demo --preset keras --batch 256   # the Keras example's model at its batch size
    python -m npvit.demo --backend cupy

It shows the whole training step (forward, loss, backward, optimizer) on a fixed random batch, so the loss
falls as the model memorises it.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .backend import BACKEND_NAMES, BackendUnavailableError, get_backend
from .cli.args import positive_int
from .cli.status import run_command
from .config import PRESETS
from .kernels import cross_entropy_backward, cross_entropy_forward
from .model import ViT
from .optim.adamw import AdamW


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m npvit.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model preset (default small)")
    parser.add_argument("--num-classes", type=positive_int, default=10, help="classes (default 10)")
    parser.add_argument("--batch", type=positive_int, default=32, help="images per step (default 32)")
    parser.add_argument("--steps", type=positive_int, default=3, help="training steps (default 3)")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default="numpy")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run_command(lambda: _demo(args), (BackendUnavailableError,), "; try a smaller --batch")


def _demo(args: argparse.Namespace) -> int:
    backend = get_backend(args.backend)
    cfg = PRESETS[args.preset](num_classes=args.num_classes)
    model = ViT(cfg, backend=backend, dtype=args.dtype, seed=args.seed)
    opt = AdamW(model.params, lr=args.lr)
    data_rng = np.random.default_rng(args.seed)
    shape = (args.batch, cfg.image_size, cfg.image_size, cfg.channels)
    images = backend.asarray(data_rng.standard_normal(shape), dtype=args.dtype)
    labels = backend.asarray(data_rng.integers(0, cfg.num_classes, args.batch))
    print(f"npvit demo: preset {args.preset}, {model.num_params():,} parameters, backend {backend.name}, "
          f"{args.dtype}, batch {args.batch} of random {cfg.image_size}x{cfg.image_size} images")

    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        logits = model.forward(images, training=True)
        loss, cache = cross_entropy_forward(logits, labels)
        model.backward(cross_entropy_backward(cache))
        grad_norm = opt.step(model.grads)
        backend.synchronize()
        seconds = time.perf_counter() - start
        print(f"step {step}/{args.steps}  loss {float(loss):.4f}  grad norm {float(grad_norm):.3f}  "
              f"{seconds:.2f} s  {args.batch / seconds:.1f} images/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
