"""``--cuda-graph``: the model's part of a training step captured once as a CUDA graph, launched each step.

A step of the small models issues a few hundred kernels of a few microseconds each; issuing them from Python
paces the step. A CUDA graph records the kernels a stream was given once and replays all of them with one
launch. Off by default until a GPU measures it (docs/gpu.md).

What is captured is ``step.model_step`` on a full batch: forward, loss, backward, AdamW, the EMA and the
running sums. A graph's kernels keep the pointers and scalars they were captured with, so whatever changes
between steps reaches them through device buffers rewritten before each launch (small fills, no upload):
the images and labels (copied into static buffers), the dropout seed (the kernels derive each site's key from
it, npvit.kernels.device), the step number, AdamW's and the EMA's scalars (``use_device_scalars``). The
augmentation runs before, uncaptured: its generators are seeded from the host every step. A shorter last
batch runs uncaptured on the same buffers.

As CuPy 14 requires (cupy/cuda/stream.pyx): the capture runs on a non-blocking stream of its own (the
legacy default stream cannot capture), in relaxed mode (CuPy's default, so that its memory pool may grow
during the capture), and nothing inside may wait for the device -- a host read, ``.get()``, an upload from
host memory or a synchronize makes CuPy raise (CUDA invalidates the capture). The arrays the capture
allocates come from that stream's arena of the memory pool, which nothing else allocates from; the graph is
launched on that stream, ordered after the default stream's work and before what follows by events. The
first full step runs uncaptured (it compiles the kernels and makes the constants), the second is captured,
and a new epoch's running sums are a new capture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.augment import Augmenter
from ..data.device import DeviceDataset
from ..distributed.communicator import SingleProcess
from ..model import ViT
from ..optim.adamw import AdamW
from ..optim.ema import WeightEMA
from ..settings import UsageError
from .step import RunningSums, StepSettings, model_step, step_inputs, stream_seed, DROPOUT

Array = Any


def check_cuda_graph(settings: dict[str, Any], processes: int) -> None:
    """Refuse --cuda-graph where the step cannot be captured, saying why and what to do."""
    if not settings.get("cuda_graph"):
        return
    why = None
    if settings["backend"] != "cupy":
        why = "it needs --backend cupy (a CUDA graph is a GPU's)"
    elif processes > 1:
        why = "one process only (the gradients' sum across processes is not captured)"
    elif settings.get("mixup") or settings.get("cutmix"):
        why = "not with --mixup or --cutmix (their draws are made on the host every step)"
    elif settings.get("drop_path"):
        why = "not with --drop-path (its masks are keyed on the host every step)"
    if why is not None:
        raise UsageError(f"--cuda-graph: {why}; run without --cuda-graph")


class CapturedStep:
    """``train_step`` for one process with the model's part of every full batch launched as a CUDA graph."""

    def __init__(self, model: ViT, opt: AdamW, ema: WeightEMA | None, batch_size: int) -> None:
        self.model, self.opt, self.ema, self.batch_size = model, opt, ema, batch_size
        xp = self.xp = model.backend.xp
        if xp is np:
            raise UsageError("--cuda-graph: it needs --backend cupy (a CUDA graph is a GPU's)")
        opt.use_device_scalars()
        if ema is not None:
            ema.use_device_scalars()
        self.stream = xp.cuda.Stream(non_blocking=True)
        self.seed = xp.zeros((), dtype=xp.uint64)  # the step's dropout seed
        self.step = xp.zeros((), dtype=xp.int64)  # the step's number, for the running sums
        self.images: Array | None = None  # the static inputs, made by the first full batch
        self.labels: Array | None = None
        self.graph: Any = None
        self.sums: RunningSums | None = None  # the running sums the graph adds to
        self.warm = False  # a full step ran uncaptured: kernels compiled, constants made
        self.launches = 0

    def __call__(self, augmenter: Augmenter, data: DeviceDataset, batch: np.ndarray, step: int,
                 settings: StepSettings, sums: RunningSums) -> None:
        part = slice(0, len(batch))
        images, labels, _ = step_inputs(self.model, augmenter, data, batch, part, step, settings)
        self.seed[...] = np.uint64(stream_seed(settings.seed, DROPOUT, step))
        self.step[...] = np.int64(step)
        self.opt.load_step_scalars()
        if self.ema is not None:
            self.ema.load_step_scalars(step)
        if len(batch) != self.batch_size:  # a shorter last batch: other shapes, uncaptured
            self._run(images, labels, len(batch), settings, sums)
            return
        if self.images is None:
            self.images, self.labels = images.copy(), labels.copy()
        else:
            self.xp.copyto(self.images, images)
            self.xp.copyto(self.labels, labels)
        if not self.warm:
            self._run(self.images, self.labels, len(batch), settings, sums)
            self.warm = True
            return
        if self.graph is None or self.sums is not sums:
            self.graph = None  # the old one (another epoch's sums) goes first
            with self.stream:
                self.stream.begin_capture()
                try:
                    self._run(self.images, self.labels, len(batch), settings, sums)
                finally:
                    graph = self.stream.end_capture()
            self.graph, self.sums = graph, sums
        default = self.xp.cuda.get_current_stream()
        self.stream.wait_event(default.record())  # after the inputs were written
        self.graph.launch(stream=self.stream)
        default.wait_event(self.stream.record())  # what follows sees the step's results
        self.launches += 1

    def _run(self, images: Array, labels: Array, size: int, settings: StepSettings, sums: RunningSums) -> None:
        model_step(self.model, self.opt, images, labels, None, self.seed, self.step, 0, size, settings, sums,
                   SingleProcess(), self.ema)
