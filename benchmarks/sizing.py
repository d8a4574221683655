"""Model sizing for a time budget: parameters, FLOPs per image and measured training images/s of candidate ViTs.

    python benchmarks/sizing.py                   # every candidate, batch 128, NumPy float32
    python benchmarks/sizing.py --budget 2 --images 45000

One training step is forward (training mode), loss, backward and AdamW on random 32x32 images (72x72 for the
Keras model), timed as the median of ``--repeats`` steps after one warm-up, with glibc's allocator set as
``python -m npvit.train`` sets it (``npvit.cli.allocator``). The last column turns the speed into the epochs of
``--images`` images that ``--budget`` hours of training afford, which is how ``ViTConfig.fast`` was chosen
(``benchmarks/NOTES.md``, "Recipe fast").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import numpy as np

import npvit
from npvit.cli.allocator import keep_freed_memory
from npvit.config import ViTConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from suite.flops import matmul_flops_per_image  # noqa: E402


def variant(dim: int, depth: int, heads: int, patch: int = 4) -> ViTConfig:
    """The fast model with another width, depth, head count or patch size (head width 32, MLP ratio 2)."""
    return dataclasses.replace(ViTConfig.fast(), dim=dim, depth=depth, num_heads=heads, key_dim=dim // heads,
                               mlp_units=(2 * dim, dim), patch_size=patch)


def compact(channels: tuple[int, ...], dim: int, depth: int, heads: int, mlp_ratio: int) -> ViTConfig:
    """The compact preset (CCT's conv tokenizer and sequence pooling) with other conv channels, width, depth,
    heads or MLP ratio."""
    return dataclasses.replace(ViTConfig.compact(), conv_channels=channels, dim=dim, depth=depth, num_heads=heads,
                               key_dim=dim // heads, mlp_units=(mlp_ratio * dim, dim))


CANDIDATES: list[tuple[str, ViTConfig]] = [
    ("fast: width 64, 6 blocks", ViTConfig.fast()),
    ("compact: conv 32,64, width 64, 4 blocks, MLP 2", ViTConfig.compact()),
    ("conv 32,64, width 128 (projected), 2 blocks, MLP 1", compact((32, 64), 128, 2, 2, 1)),
    ("conv 64,128, width 128, 2 blocks, MLP 1 (CCT-2/3x2)", compact((64, 128), 128, 2, 2, 1)),
    ("conv 32,64, width 64, 6 blocks, MLP 2", compact((32, 64), 64, 6, 2, 2)),
    ("conv 32,96, width 96, 4 blocks, MLP 2", compact((32, 96), 96, 4, 3, 2)),
    ("width 96, 6 blocks", variant(96, 6, 3)),
    ("width 128, 6 blocks", variant(128, 6, 4)),
    ("width 192, 6 blocks", variant(192, 6, 6)),
    ("width 96, 9 blocks", variant(96, 9, 3)),
    ("width 96, 6 blocks, 2x2 patches", variant(96, 6, 3, patch=2)),
    ("small preset (flatten head)", ViTConfig.small()),
    ("keras preset, 72x72", ViTConfig.keras(num_classes=10)),
]


def train_images_per_s(cfg: ViTConfig, batch: int, repeats: int) -> float:
    model = npvit.ViT(cfg, dtype="float32")
    opt = npvit.AdamW(model.params)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)
    y = rng.integers(0, cfg.num_classes, batch)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        logits = model.forward(x, training=True)
        model.backward(npvit.cross_entropy_backward(npvit.cross_entropy_forward(logits, y)[1]))
        opt.step(model.grads)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.0, help="hours of training")
    parser.add_argument("--images", type=int, default=45000, help="images per epoch")
    parser.add_argument("--only", type=int, default=None, help="the first N candidates (for a quick look)")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as python -m npvit.train does, so that the speeds are the training command's
    print(f"| model | parameters | tokens | forward MFLOP/image | train images/s (batch {args.batch}) "
          f"| epochs in {args.budget:g} h |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, cfg in CANDIDATES[:args.only]:
        speed = train_images_per_s(cfg, args.batch, args.repeats)
        epochs = speed * args.budget * 3600 / args.images
        print(f"| {name} | {cfg.num_params():,} | {cfg.num_tokens} | {matmul_flops_per_image(cfg) / 1e6:.0f} "
              f"| {speed:.0f} | {epochs:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
