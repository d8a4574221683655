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

from .batch import make_batch
from .context import DTYPE, Ctx
from .peer import F, TR, torch
from .timing import time_phases


class NpvitRunner:
    """npvit model, AdamW and one batch; ``train_step`` / ``forward`` return their timings."""

    name = "npvit"

    def __init__(self, ctx: Ctx, cfg: npvit.ViTConfig, batch: int, seed: int = 0) -> None:
        self.ctx = ctx
        self.model = npvit.ViT(cfg, backend=ctx.backend, dtype=DTYPE, seed=seed)
        self.opt = npvit.AdamW(self.model.params, lr=1e-3, weight_decay=1e-4)
        images, labels = make_batch(cfg, batch, seed)
        self.images, self.labels = images, labels
        self.x, self.y = ctx.backend.asarray(images), ctx.backend.asarray(labels)

    def train_step(self, breakdown: bool = False) -> dict[str, float]:
        return time_phases(self.ctx.sync_npvit, [
            ("forward", lambda _: self.model.forward(self.x, training=True)),
            ("loss", lambda logits: npvit.cross_entropy_backward(npvit.cross_entropy_forward(logits, self.y)[1])),
            ("backward", self.model.backward),
            ("adamw", lambda _: self.opt.step(self.model.grads)),
        ], breakdown)

    def forward(self) -> dict[str, float]:
        self.ctx.sync_npvit()
        t0 = time.perf_counter()
        self.model.forward(self.x)
        self.ctx.sync_npvit()
        return {"forward": time.perf_counter() - t0}


class TorchRunner:
    """TorchViT with npvit's initial weights, torch AdamW and the same batch."""

    def __init__(self, ctx: Ctx, cfg: npvit.ViTConfig, images: np.ndarray, labels: np.ndarray,
                 attention: str = "eager", params: dict | None = None) -> None:
        self.ctx, self.name = ctx, "torch" if attention == "eager" else f"torch-{attention}"
        dev = ctx.torch_device
        self.model = TR.TorchViT(cfg, dtype=torch.float32, device=dev, attention=attention)
        if params is not None:
            self.model.load_npvit_params(params)  # npvit's initial weights
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=1e-4, eps=1e-7)
        self.x = torch.from_numpy(images).to(dev)
        self.y = torch.from_numpy(labels).to(dev)

    def train_step(self, breakdown: bool = False) -> dict[str, float]:
        self.model.train()

        def forward(_: Any) -> Any:
            self.opt.zero_grad(set_to_none=True)
            return self.model(self.x)

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
            self.model(self.x)
        self.ctx.sync_torch()
        return {"forward": time.perf_counter() - t0}


def make_runners(ctx: Ctx, cfg: npvit.ViTConfig, batch: int, peers: tuple[str, ...] | None = None
                 ) -> dict[str, Any]:
    """npvit, then each torch peer built from npvit's initial weights and batch."""
    runners: dict[str, Any] = {"npvit": NpvitRunner(ctx, cfg, batch)}
    nv = runners["npvit"]
    for peer in ctx.peers if peers is None else peers:
        runners[peer] = TorchRunner(ctx, cfg, nv.images, nv.labels, ctx.attention_of(peer), params=nv.model.params)
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
