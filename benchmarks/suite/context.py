"""What one run of the suite is: its sizes and repeat counts (``Settings``, per device and mode in
``SETTINGS``), and the context every section receives (``Ctx``: backend, torch peer, logger, measured peak).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import npvit

from .peer import torch

SECTIONS = ("peak", "kernels", "e2e", "seqlen")
FRAMEWORKS = ("npvit", "torch")
DTYPE = "float32"


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts of one run (full or quick, CPU or GPU)."""

    warmup: int
    peak_sizes: tuple[int, ...]
    peak_repeats: int
    kernel_batch: int
    kernel_repeats: int
    kernel_target_s: float  # each kernel sample loops until about this long
    e2e: dict[str, tuple[int, ...]]
    e2e_repeats: int
    seq_grids: tuple[int, ...]
    seq_batch: int
    seq_repeats: int
    pause_s: float = 0.0  # idle time before each contender's turn, so the other library's threads go to sleep


SETTINGS = {
    ("cpu", "full"): Settings(
        warmup=1, peak_sizes=(2048, 3072, 4096), peak_repeats=3,
        kernel_batch=256, kernel_repeats=3, kernel_target_s=0.1,
        e2e={"keras": (64, 128, 256), "keras-wide": (32, 64), "small": (128, 256)}, e2e_repeats=3,
        seq_grids=(8, 12, 16, 20, 24), seq_batch=64, seq_repeats=2, pause_s=0.2,
    ),
    ("cpu", "quick"): Settings(
        warmup=1, peak_sizes=(1024, 2048), peak_repeats=2,
        kernel_batch=32, kernel_repeats=3, kernel_target_s=0.02,
        e2e={"keras": (16, 32), "keras-wide": (16,), "small": (32,)}, e2e_repeats=3,
        seq_grids=(8, 16, 24), seq_batch=8, seq_repeats=2, pause_s=0.2,
    ),
    ("gpu", "full"): Settings(
        warmup=3, peak_sizes=(4096, 8192), peak_repeats=5,
        kernel_batch=256, kernel_repeats=10, kernel_target_s=0.05,
        e2e={"keras": (64, 128, 256, 512), "keras-wide": (64, 128, 256), "small": (128, 256, 512)},
        e2e_repeats=10, seq_grids=(8, 12, 16, 20, 24), seq_batch=64, seq_repeats=10,
    ),
    ("gpu", "quick"): Settings(
        warmup=2, peak_sizes=(2048, 4096), peak_repeats=3,
        kernel_batch=64, kernel_repeats=3, kernel_target_s=0.02,
        e2e={"keras": (64, 256), "keras-wide": (64,), "small": (256,)}, e2e_repeats=3,
        seq_grids=(8, 12, 16, 20, 24), seq_batch=32, seq_repeats=3,
    ),
}


@dataclass
class Ctx:
    """What every section needs: the npvit backend, the torch peer (if any), settings and a logger."""

    backend: npvit.Backend
    settings: Settings
    threads: int
    torch_device: str | None = None  # None: no torch peer
    torch_note: str = ""
    sdpa: bool = False  # also time torch with F.scaled_dot_product_attention
    compile: bool = False  # e2e: also time torch.compile (the default inductor backend) of the eager model
    numpy_kernels: bool = False  # e2e: also time npvit on its NumPy kernels (npvit-numpy) beside its default tier
    memory: bool = True
    tf32: bool = False
    verbose: bool = True
    peak_gflops: float | None = None

    @property
    def peers(self) -> tuple[str, ...]:
        """The torch contenders: eager, plus SDPA with --sdpa; none without torch."""
        if not self.torch_device:
            return ()
        return ("torch", "torch-sdpa") if self.sdpa else ("torch",)

    @property
    def e2e_peers(self) -> tuple[str, ...]:
        """The e2e section's contenders besides npvit: npvit-numpy (--numpy-kernels), the torch peers and
        torch-compile (--compile)."""
        extra = ("torch-compile",) if self.compile and self.torch_device else ()
        return ("npvit-numpy",) * self.numpy_kernels + self.peers + extra

    @staticmethod
    def attention_of(peer: str) -> str:
        """The torch attention implementation of a peer: "sdpa" for torch-sdpa, else "eager"."""
        return "sdpa" if peer == "torch-sdpa" else "eager"

    @property
    def xp(self) -> Any:
        return self.backend.xp

    def sync_npvit(self) -> None:
        self.backend.synchronize()

    def sync_torch(self) -> None:
        if self.torch_device and self.torch_device.startswith("cuda"):
            torch.cuda.synchronize()

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
