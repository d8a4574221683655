"""What the sections time: one model, its optimizer and one batch per framework.

``NpvitRunner`` and ``TorchRunner`` (the same network in PyTorch, built from npvit's initial weights) each
offer ``train_step`` (forward, loss, backward, AdamW) and ``forward`` (inference), returning their timings.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any

import numpy as np

import npvit
from npvit.kernels.compiled import kernel_tier_set

from .batch import make_batch
from .context import DTYPE, Ctx
from .peer import F, TR, torch
from .timing import time_phases


class NpvitRunner:
    """npvit model, AdamW and one batch; ``train_step`` / ``forward`` return their timings."""

    name = "npvit"

    def __init__(self, ctx: Ctx, cfg: npvit.ViTConfig, batch: int, seed: int = 0, tier: str | None = None) -> None:
        self.ctx, self.tier = ctx, tier  # tier: the CPU kernel tier it runs on (None: the process's default)
        self.model = npvit.ViT(cfg, backend=ctx.backend, dtype=DTYPE, seed=seed)
        self.opt = npvit.AdamW(self.model.params, lr=1e-3, weight_decay=1e-4)
        images, labels = make_batch(cfg, batch, seed)
        self.images, self.labels = images, labels
        self.x, self.y = ctx.backend.asarray(images), ctx.backend.asarray(labels)

    def train_step(self, breakdown: bool = False) -> dict[str, float]:
        with kernel_tier_set(self.tier):
            return time_phases(self.ctx.sync_npvit, [
                ("forward", lambda _: self.model.forward(self.x, training=True)),
                ("loss", lambda logits: npvit.cross_entropy_backward(npvit.cross_entropy_forward(logits, self.y)[1])),
                ("backward", self.model.backward),
                ("adamw", lambda _: self.opt.step(self.model.grads)),
            ], breakdown)

    def forward(self) -> dict[str, float]:
        with kernel_tier_set(self.tier):
            self.ctx.sync_npvit()
            t0 = time.perf_counter()
            self.model.forward(self.x)
            self.ctx.sync_npvit()
            return {"forward": time.perf_counter() - t0}


class TorchRunner:
    """TorchViT with npvit's initial weights, torch AdamW and the same batch; ``compiled``: called through
    ``torch.compile`` (default inductor backend; it compiles in the warm-up rounds, for training and for
    inference each)."""

    def __init__(self, ctx: Ctx, cfg: npvit.ViTConfig, images: np.ndarray, labels: np.ndarray,
                 attention: str = "eager", params: dict | None = None, compiled: bool = False) -> None:
        self.ctx, self.name = ctx, "torch" if attention == "eager" else f"torch-{attention}"
        dev = ctx.torch_device
        self.model = TR.TorchViT(cfg, dtype=torch.float32, device=dev, attention=attention)
        if params is not None:
            self.model.load_npvit_params(params)  # npvit's initial weights
        self.call = torch.compile(self.model) if compiled else self.model
        if compiled:
            self.name = "torch-compile"
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=1e-4, eps=1e-7)
        self.x = torch.from_numpy(images).to(dev)
        self.y = torch.from_numpy(labels).to(dev)

    def train_step(self, breakdown: bool = False) -> dict[str, float]:
        self.model.train()

        def forward(_: Any) -> Any:
            self.opt.zero_grad(set_to_none=True)
            return self.call(self.x)

        return time_phases(self.ctx.sync_torch, [
            ("forward", forward),
            ("loss", lambda logits: F.cross_entropy(logits, self.y)),
            ("backward", lambda loss: loss.backward()),
            ("adamw", lambda _: self.opt.step()),
        ], breakdown)

    def forward(self) -> dict[str, float]:
        self.model.eval()
        self.ctx.sync_torch()
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.call(self.x)
        self.ctx.sync_torch()
        return {"forward": time.perf_counter() - t0}


def make_runners(ctx: Ctx, cfg: npvit.ViTConfig, batch: int, peers: tuple[str, ...] | None = None
                 ) -> dict[str, Any]:
    """npvit, then each torch peer built from npvit's initial weights and batch."""
    runners: dict[str, Any] = {"npvit": NpvitRunner(ctx, cfg, batch)}
    nv = runners["npvit"]
    for peer in ctx.peers if peers is None else peers:
        if peer == "npvit-numpy":  # the same model, seed and batch on the NumPy kernels
            runners[peer] = NpvitRunner(ctx, cfg, batch, tier="numpy")
            continue
        runners[peer] = TorchRunner(ctx, cfg, nv.images, nv.labels, ctx.attention_of(peer), params=nv.model.params,
                                    compiled=peer == "torch-compile")
    return runners


def free(collect: bool = True) -> None:
    """Collect garbage and return cached device memory, so one row does not inflate the next (callers drop
    their references first). Reference counting frees arrays by itself; ``collect`` also breaks cycles (about
    0.1 s with torch loaded)."""
    if collect:
        gc.collect()
    if sys.modules.get("cupy") is not None:
        sys.modules["cupy"].get_default_memory_pool().free_all_blocks()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
