"""How much memory a training step needs, estimated from the config before anything is allocated, and how
much the machine has free, so that a run too large for it is refused with the batch size that would fit.

Per image, the training forward pass keeps every activation the backward pass reads (T tokens of width D,
H heads of width d, MLP widths u_i, head widths h_j, input side S, itemsize s bytes, masks one byte each):

    images and patches      4 S^2 C + N K^2 C                 resized, flipped, rotated, zoomed; cut into N patches
                                                              of K x K pixels (K = P + 2 overlap)
    each block              4 T D  + 2 T D                    two layer norms (normalised input and output), and
                                                              the two residual sums
                            3 T H d + T H d                   fused query/key/value, heads' outputs
                            T^2 H (+ T^2 H / s)               attention probabilities (and dropout mask)
                            sum_i 3 T u_i (+ T u_i / s)       MLP: GELU input, Phi, dropout output (and mask)
    head                    2 P + sum_j 3 h_j (+ masks)       pooled vector of width P, MLP
    
times a safety factor for what the backward pass holds at once (measured: tests/train/test_train.py checks that
the estimate stays within a band above tracemalloc's peak). The fixed part is the parameters, AdamW's two
moments, and one set of gradients per thread shard plus the one kept: (4 + threads) x parameters x s, and
one more parameters x s for the moving average of the weights with --ema (npvit.optim.ema.WeightEMA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import ViTConfig

# The backward pass holds activation gradients and a block's temporaries beside the forward caches.
BACKWARD_FACTOR = 1.25
GIB = 1 << 30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step needs: ``fixed + per_image * batch``."""

    fixed: int
    per_image: int

    def total(self, batch: int) -> int:
        return self.fixed + self.per_image * batch

    def largest_batch(self, available: int) -> int:
        """The largest batch whose step fits in ``available`` bytes (0 if not even one image does)."""
        return max(0, (available - self.fixed) // self.per_image)


def activation_elements(cfg: ViTConfig, itemsize: int) -> float:
    """Elements (of the model dtype) the training forward pass keeps per image; masks count 1/itemsize."""
    t, d, hd = cfg.num_tokens, cfg.dim, cfg.num_heads * cfg.key_dim
    pixels = cfg.image_size**2 * cfg.channels
    mask = 1.0 / itemsize
    block = 6 * t * d + 4 * t * hd + t * t * cfg.num_heads * (1 + mask)
    block += sum(t * u * (3 + mask) for u in cfg.mlp_units)
    head = cfg.pooled_dim * (2 + mask) + sum(u * (3 + mask) for u in cfg.head_units) + cfg.num_classes
    return 4 * pixels + cfg.num_patches * cfg.patch_dim + t * d + cfg.depth * block + head


def training_step(cfg: ViTConfig, itemsize: int, threads: int = 1, ema: bool = False) -> MemoryEstimate:
    """The memory of one training step of ``cfg`` with ``threads`` batch shards, in bytes; ``ema``: with the
    moving average of the weights (one more copy of the parameters)."""
    per_image = int(BACKWARD_FACTOR * activation_elements(cfg, itemsize) * itemsize)
    fixed = (4 + threads + (1 if ema else 0)) * cfg.num_params() * itemsize
    return MemoryEstimate(fixed, per_image)


def available_bytes() -> int | None:
    """Host memory this process may still allocate: the least of the system's available memory, the cgroup
    limit's headroom (containers, Slurm) and the address-space limit (``ulimit -v``). None where none of
    them can be read (not Linux)."""
    limits = [_meminfo_available(), _cgroup_headroom(), _address_space_headroom()]
    known = [v for v in limits if v is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max", or v1's "no limit" (close to 2**63)
            return max(0, int(limit) - usage)
    return None


def _address_space_headroom() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open(f"/proc/{os.getpid()}/statm") as f:
            size_pages = int(f.read().split()[0])
        return max(0, soft - size_pages * os.sysconf("SC_PAGE_SIZE"))
    except (ImportError, OSError, ValueError, IndexError):
        return None


def describe(nbytes: float) -> str:
    """1.5 * 2**30 -> '1.5 GiB'; small amounts in MiB."""
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB else f"{nbytes / (1 << 20):.0f} MiB"
