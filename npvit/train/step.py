"""One optimizer step of training, and the running sums it leaves on the device.

    images = augment(x[batch])                      the rank's slice of the global batch, flip/rotate/zoom
    images, targets = mix(images, partners)         optional Mixup/CutMix with the rows T - 1 - i (npvit.data.mix)
    logits = model.forward(images, training=True)   dropout keyed by the step
    loss   = cross_entropy(logits, labels)          the mean over the slice (against targets when mixing)
    model.backward(dloss * (slice / batch))         so that the ranks' gradients add up to the batch mean's
    comm.allreduce_sum(gradients)                   the identity with one process
    AdamW step at the schedule's learning rate      skipped, and flagged, if the gradient is not finite
    ema.update(params, step)                        with --ema: the moving average, skipped with AdamW's step

Nothing in a step reads a value back from the device: the loss, the correct predictions and a flag for
non-finite values are added to device scalars (``RunningSums``) that the loop reads only now and then
(``RunningSums.read``). On a GPU every such read waits for the queued work, so reading once per step would
keep Python from running ahead of the GPU.

Every random stream is a pure function of (seed, stream, step): a resumed run draws what the uninterrupted
run drew.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.augment import Augmenter
from ..backend import Backend, to_numpy
from ..data.device import DeviceDataset
from ..distributed.communicator import Communicator, SingleProcess
from ..distributed.split import rank_slice
from ..optim.ema import WeightEMA
from ..kernels import (
    cross_entropy_backward,
    cross_entropy_forward,
    soft_cross_entropy_backward,
    soft_cross_entropy_forward,
)
from ..data.mix import check_alphas, draw_mix, mix_images, mix_targets
from ..model import ViT
from ..optim.adamw import AdamW

Array = Any
SHUFFLE, DROPOUT, AUGMENT, MIX = 0, 1, 2, 3  # the random streams of a run


def stream_seed(seed: int, stream: int, index: int, *more: int) -> int:
    """A seed for random stream ``stream`` at step or epoch ``index``: pure, so resuming reproduces it."""
    return int(np.random.SeedSequence([seed, stream, index, *more]).generate_state(1)[0])


class RunningSums:
    """The current epoch's loss sum, correct count and non-finite steps, kept as device scalars.

    ``add`` queues a few scalar operations and never waits; ``read`` brings all of them to the host in one
    transfer. The loss is summed in float64, one loss x images term per step, as a Python float would be:
    the totals do not depend on when they are read.
    """

    def __init__(self, xp: Any, loss_sum: float = 0.0, correct: int = 0) -> None:
        self.xp = xp
        self.loss_sum = xp.asarray(loss_sum, dtype=xp.float64)
        self.correct = xp.asarray(correct, dtype=xp.int64)
        self.nonfinite = xp.asarray(0, dtype=xp.int64)  # steps whose loss or gradient norm was not finite
        self.first_nonfinite = xp.asarray(-1, dtype=xp.int64)  # the first such step, or -1

    def add(self, step: int | Array, loss: Array, images: int, correct: Array, finite: Array) -> None:
        """Count one step: its mean ``loss`` over ``images``, its ``correct`` predictions, and whether it was
        ``finite``, all device scalars (``step`` may be one too)."""
        xp = self.xp  # in place: a captured CUDA graph adds to the very arrays it was captured with
        if xp is not np:  # CuPy: the four sums in one kernel
            _sums_kernel(xp)(loss, correct, finite, step, np.float64(images), self.loss_sum, self.correct,
                             self.nonfinite, self.first_nonfinite)
            return
        xp.add(self.loss_sum, loss.astype(xp.float64) * images, out=self.loss_sum)
        xp.add(self.correct, correct, out=self.correct)
        bad = ~finite
        xp.add(self.nonfinite, bad, out=self.nonfinite)
        xp.copyto(self.first_nonfinite, xp.where(bad & (self.first_nonfinite < 0), step, self.first_nonfinite))

    def read(self) -> tuple[float, int, int, int]:
        """(loss_sum, correct, nonfinite steps, first non-finite step or -1) on the host: one transfer."""
        xp = self.xp
        values = to_numpy(xp.stack([self.loss_sum, self.correct.astype(xp.float64),
                                    self.nonfinite.astype(xp.float64), self.first_nonfinite.astype(xp.float64)]))
        return float(values[0]), int(values[1]), int(values[2]), int(values[3])


_SUMS: dict[Any, Any] = {}


def _sums_kernel(xp: Any) -> Any:
    """RunningSums.add on CuPy as one ElementwiseKernel over 0-d arrays (the bad step's number replaces -1
    only: first + (step - first) [first < 0] [not finite])."""
    if xp not in _SUMS:
        _SUMS[xp] = xp.ElementwiseKernel(
            "T loss, int64 correct, bool finite, int64 step, float64 images",
            "float64 loss_sum, int64 correct_sum, int64 nonfinite, int64 first",
            "loss_sum = loss_sum + double(loss) * images; correct_sum = correct_sum + correct;"
            "nonfinite = nonfinite + 1 - finite; first = first + (step - first) * ((first < 0) * (1 - finite));",
            "npvit_running_sums")
    return _SUMS[xp]


@dataclass(frozen=True)
class StepSettings:
    """The settings a step needs besides the model, the optimizer and the data."""

    seed: int
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Mixup's Beta alpha; 0: off
    cutmix: float = 0.0  # CutMix's Beta alpha; 0: off

    def __post_init__(self) -> None:
        check_alphas(self.mixup, self.cutmix)

    @property
    def mixing(self) -> bool:
        """Whether images and targets are mixed (npvit.data.mix)."""
        return self.mixup > 0 or self.cutmix > 0


def train_step(
    model: ViT,
    opt: AdamW,
    augmenter: Augmenter,
    data: DeviceDataset,
    batch: np.ndarray,
    step: int,
    settings: StepSettings,
    sums: RunningSums,
    comm: Communicator | None = None,
    ema: WeightEMA | None = None,
) -> None:
    """One optimizer step on the global batch ``batch`` (indices into ``data``, in single-process order), at the
    learning rate ``opt.lr`` (the loop sets it from the schedule).

    Args:
        model, opt, augmenter: what is trained, how, and the training-time preprocessing.
        data: the training images (uint8, (N, H, W, C)) and labels (int64, (N,)), where the backend computes
            (``DeviceDataset``); each step gathers its rows there. Labels must have been checked once
            beforehand (``DeviceDataset(..., num_classes)`` or ``kernels.cross_entropy.check_labels``).
        batch: the global batch's indices; this rank takes ``rank_slice(len(batch), comm.rank, comm.size)``.
        step: the 0-based global step: keys the dropout, augmentation and mixing streams.
        settings: the seed, label smoothing and mixing alphas.
        sums: device running sums the step adds its loss, correct predictions and finiteness to.
        comm: the ranks training together (default: this process alone).
        ema: the moving average of the weights to update after the optimizer step, if any. Every rank holds
            the same weights after the step, so every rank's average is the same without communication.

    With several ranks, the loss is the mean over the rank's slice, and its gradient is scaled by
    slice / batch, so that the sum over ranks is the gradient of the mean over the global batch.
    """
    comm = comm or SingleProcess()
    part = rank_slice(len(batch), comm.rank, comm.size)
    images, labels, targets = step_inputs(model, augmenter, data, batch, part, step, settings)
    model_step(model, opt, images, labels, targets, stream_seed(settings.seed, DROPOUT, step), step, part.start,
               len(batch), settings, sums, comm, ema)


def step_inputs(model: ViT, augmenter: Augmenter, data: DeviceDataset, batch: np.ndarray, part: slice, step: int,
                settings: StepSettings) -> tuple[Array | None, Array | None, Array | None]:
    """The rank's augmented images, labels and (when mixing) soft targets of step ``step``; Nones for an
    empty slice."""
    local = batch[part]
    if len(local) == 0:
        return None, None, None
    backend = model.backend
    raw, labels = data.batch(local)
    # Augmentation and dropout are keyed by the step and the global image index: every rank draws the
    # global batch's parameters and takes its rows, so the images do not depend on the number of ranks.
    images = augmenter(raw, training=True, rng=backend.rng(stream_seed(settings.seed, AUGMENT, step)),
                       first=part.start, total=len(batch))
    targets = None
    if settings.mixing:
        images, targets = mix_slice(augmenter, data, batch, part, images, labels, step, settings,
                                    model.config.num_classes, backend)
    return images, labels, targets


def model_step(model: ViT, opt: AdamW, images: Array | None, labels: Array | None, targets: Array | None,
               dropout_seed: int | Array, step: int | Array, first: int, batch_size: int, settings: StepSettings,
               sums: RunningSums, comm: Communicator, ema: WeightEMA | None) -> None:
    """Forward, loss, backward, the gradients' sum over ranks, AdamW, the EMA and the running sums of one step
    on given inputs: what a CUDA graph captures (npvit.train.graph), ``dropout_seed`` and ``step`` then being
    device scalars."""
    xp = model.backend.xp
    local = 0 if images is None else len(images)
    if local == 0:  # fewer images than ranks: this rank adds nothing but still takes part in the sum
        for g in gradient_buffers(model):
            g[...] = 0
        loss = xp.zeros((), dtype=model.dtype)
        correct = xp.zeros((), dtype=xp.int64)
    else:
        logits = model.forward(images, training=True, dropout_seed=dropout_seed, first_sample=first)
        if targets is not None:
            loss, soft_cache = soft_cross_entropy_forward(logits, targets)
            model.backward(soft_cross_entropy_backward(soft_cache, local / batch_size), input_grad=False)
        else:
            loss, cache = cross_entropy_forward(logits, labels, settings.label_smoothing)
            model.backward(cross_entropy_backward(cache, local / batch_size), input_grad=False)
        correct = (xp.argmax(logits, axis=1) == labels).sum()  # with mixing: the image's own label
    for g in gradient_buffers(model):
        comm.allreduce_sum(g)
    norm = opt.step(model.grads)
    stepped = xp.isfinite(norm)  # AdamW skipped the update if the norm is not finite
    if ema is not None:
        ema.update(model.params.flat, step, stepped)  # skipped with AdamW's: the average moves iff the weights did
    finite = xp.isfinite(loss) & stepped
    sums.add(step, loss, local, correct, finite)


def mix_slice(
    augmenter: Augmenter,
    data: DeviceDataset,
    batch: np.ndarray,
    part: slice,
    images: Array,
    labels: Array,
    step: int,
    settings: StepSettings,
    num_classes: int,
    backend: Backend,
) -> tuple[Array, Array]:
    """Mixup/CutMix (npvit.data.mix) of a rank's augmented ``images`` and ``labels``, rows ``part`` of the global
    ``batch``: returns (mixed images, soft targets in the images' dtype), what one process holding the whole
    batch computes for these rows.

    The partners of rows [a, b) of a batch of T are the rows T - b .. T - 1 - a in reverse. When that is the
    slice itself (one process, or the middle rank), they are ``images[::-1]``; otherwise this rank gathers and
    augments them itself, with the augmentation's own keyed draws, as their rank does.
    """
    total = len(batch)
    first, last = total - part.stop, total - part.start  # the partners' rows, [first, last), reversed
    if (first, last) == (part.start, part.stop):
        partners, partner_labels = images[::-1], labels[::-1]
    else:
        raw, partner_labels = data.batch(batch[first:last])
        partners = augmenter(raw, training=True, rng=backend.rng(stream_seed(settings.seed, AUGMENT, step)),
                             first=first, total=total)[::-1]
        partner_labels = partner_labels[::-1]
    _, height, width, _ = images.shape
    draws = draw_mix(total, height, width, settings.mixup, settings.cutmix,
                     backend.rng(stream_seed(settings.seed, MIX, step)), backend.xp).rows(part)
    targets = mix_targets(labels, partner_labels, draws.lam, num_classes, settings.label_smoothing, images.dtype)
    return mix_images(images, partners, draws), targets


def gradient_buffers(model: ViT) -> list[Array]:
    """The arrays that hold the model's gradients: the one flat buffer (a FlatDict's), else every array."""
    flat = getattr(model.grads, "flat", None)
    return [flat] if flat is not None else list(model.grads.values())
