"""Evaluate a trained model: loss, top-1 and top-5 accuracy, and accuracy per class.

    python -m npvit.evaluate runs/cifar10/best.npz                # the test split of the run's dataset
    python -m npvit.evaluate runs/cifar10                         # a run folder: its best.npz, else last.npz
    python -m npvit.evaluate runs/cifar10/best.npz --data-dir /data/cifar-10-binary.tar.gz --backend cupy
    python -m npvit.evaluate runs/cifar10 --eval-flip             # test-time flip (default: as the run did)
    python -m npvit.evaluate runs/cifar10 --eval-shift 1          # and test-time shifts (default: as the run did)
    python -m npvit.evaluate pretrained:cifar10 --data-dir PATH   # the model shipped with npvit

``evaluate`` is also what the training program uses for its validation and test numbers.

Test-time flip (``--eval-flip``) scores each image by the mean of the logits of the image and of its mirror
image (``inference_logits``). A model trained with random horizontal flips has learnt that the two are the
same class; averaging its two answers cancels part of its error, for twice the evaluation time. The mean of
logits is the normalised geometric mean of the two softmax distributions (softmax ignores a per-row constant),
so the loss is still the cross-entropy of a distribution.

Test-time shifts (``--eval-shift PIXELS``) add views of each image moved by PIXELS rows and columns in the
four diagonal directions, the uncovered border black, as the training crop's zero padding makes it
(``shifted``): 5 views, 10 with the flip, each scored as above and their logits averaged (``view_logits``). A
model trained on random crops of the padded image has seen each of them as the same class. The training
program applies them to the final test only: the validation after every epoch stays one view (two with the
flip), so picking the best epoch costs what it did.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

from .backend import BACKEND_NAMES, BackendUnavailableError, get_array_module, to_numpy
from .checkpoint import CheckpointError
from .cli.allocator import keep_freed_memory
from .cli.args import non_negative_int, positive_int
from .cli.progress import ProgressBar
from .cli.status import run_command
from .data import DataError
from .data.augment import Augmenter
from .files import dumps_finite
from .kernels import cross_entropy_forward
from .loading import load
from .model import ViT
from .settings import load_run_dataset


@dataclass
class EvalResult:
    """Mean loss, top-1 and top-k accuracy (fractions), and per-class accuracy over an evaluated split."""

    loss: float
    top1: float
    top5: float
    per_class: np.ndarray  # accuracy of each class (NaN where a class has no examples)
    counts: np.ndarray  # examples of each class

    def as_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "top1": self.top1, "top5": self.top5}


def inference_logits(model: ViT, x: Any, flip: bool = False) -> Any:
    """(B, K) logits of the preprocessed batch ``x`` (B, H, W, C); with ``flip``, the mean of the logits of
    ``x`` and of ``x[:, :, ::-1]``, its mirror image (width reversed)."""
    logits = model.forward(x)  # (B, K)
    if flip:
        logits = 0.5 * (logits + model.forward(x[:, :, ::-1]))  # (B, K), still model.dtype (0.5 is a Python float)
    return logits


def shift_offsets(shift: int) -> list[tuple[int, int]]:
    """The (rows, columns) offsets of the test-time views: the image itself, then with ``shift`` > 0 the four
    diagonal moves by ``shift`` pixels."""
    if shift == 0:
        return [(0, 0)]
    return [(0, 0), (shift, shift), (shift, -shift), (-shift, shift), (-shift, -shift)]


def shifted(images: Any, dy: int, dx: int) -> Any:
    """``images`` (B, H, W, C) with pixel (i, j) taken from (i + dy, j + dx), black (0) where that is outside:
    the random crop's window at offset (dy, dx) of the zero-padded image (``npvit.data.augment``)."""
    xp = get_array_module(images)
    h, w = images.shape[1], images.shape[2]
    out = xp.zeros_like(images)  # (B, H, W, C)
    out[:, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        images[:, max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def shift_misfit(shift: int, height: int, width: int, of_model: bool = False) -> str | None:
    """Why ``--eval-shift shift`` cannot score ``height`` x ``width`` images (a view moved by a whole side is
    all black), or None when it can; the message speaks of the model's images or (default) the test images."""
    if 0 <= shift < min(height, width):
        return None
    images = f"model's {height}x{width} images" if of_model else f"{height}x{width} test images"
    return f"--eval-shift {shift} does not fit the {images}: give fewer pixels than their side, or 0"


def describe_views(flip: bool, shift: int) -> str:
    """", test-time flip", ", test-time flip and 1-pixel shifts (10 views)" and so on; "" for one view."""
    if not shift:
        return ", test-time flip" if flip else ""
    views = len(shift_offsets(shift)) * (2 if flip else 1)
    return f", test-time {'flip and ' if flip else ''}{shift}-pixel shifts ({views} views)"


def view_logits(model: ViT, preprocess: Callable[[Any], Any], images: Any, flip: bool = False,
                shift: int = 0) -> Any:
    """(B, K) logits of the raw batch ``images`` (B, H, W, C): the mean over the test-time views
    (``shift_offsets(shift)``, each ``inference_logits`` of ``preprocess(shifted(images, dy, dx))``, with
    ``flip`` its mirror image too). ``shift=0`` is ``inference_logits(model, preprocess(images), flip)``."""
    if shift < 0 or shift >= min(images.shape[1], images.shape[2]):
        raise ValueError(f"a test-time shift of {shift} pixels does not fit {images.shape[1]}x{images.shape[2]} "
                         "images: give 0 (off) or fewer pixels than the image's side")
    offsets = shift_offsets(shift)
    logits = inference_logits(model, preprocess(images), flip)  # (B, K), the unmoved view
    for dy, dx in offsets[1:]:
        logits = logits + inference_logits(model, preprocess(shifted(images, dy, dx)), flip)  # (B, K)
    return logits if len(offsets) == 1 else logits * (1.0 / len(offsets))  # a Python float keeps the dtype


def evaluate(model: ViT, augmenter: Augmenter, images: np.ndarray, labels: np.ndarray, batch_size: int = 256,
             progress: bool = False, label: str = "eval", flip: bool = False, shift: int = 0) -> EvalResult:
    """Run ``model`` in inference mode over host ``images`` (uint8, un-normalised) and integer ``labels``;
    with ``flip``, on the mean of the logits of each image and its mirror image (``inference_logits``); with
    ``shift`` > 0, on the mean over the shifted views too (``view_logits``)."""
    backend, k = model.backend, model.config.num_classes
    n = len(images)
    if n == 0:
        raise ValueError("nothing to evaluate: the split is empty")
    preprocess = partial(augmenter, training=False)  # view_logits refuses a shift the images cannot take
    topk = min(5, k)
    xp = backend.xp
    # The sums stay on the device and are read once, after the last batch: a GPU never waits mid-pass.
    loss_sum = xp.zeros((), dtype=xp.float64)  # () sum of the batches' mean loss times their size
    correct = xp.zeros(2, dtype=xp.int64)  # (2,) top-1 and top-k hits
    hits = xp.zeros(k, dtype=xp.int64)  # (K,) top-1 hits per class
    classes = xp.arange(k)  # (K,)
    counts = np.bincount(labels, minlength=k)
    bar = ProgressBar(math.ceil(n / batch_size), label, enabled=None if progress else False)
    for i, start in enumerate(range(0, n, batch_size)):
        x = backend.asarray(images[start:start + batch_size])
        y = backend.asarray(labels[start:start + batch_size])  # (B,)
        logits = view_logits(model, preprocess, x, flip, shift)  # (B, K)
        loss, _ = cross_entropy_forward(logits, y)
        loss_sum += loss.astype(xp.float64) * len(y)
        top = xp.argsort(-logits, axis=1)[:, :topk]  # (B, topk)
        first = top[:, 0] == y  # (B,)
        correct[0] += first.sum()
        correct[1] += (top == y[:, None]).any(axis=1).sum()
        hits += ((y[:, None] == classes) & first[:, None]).sum(axis=0)  # (K,)
        bar.update(i + 1)
    bar.close()
    totals = to_numpy(xp.concatenate([loss_sum.reshape(1), correct.astype(xp.float64), hits.astype(xp.float64)]))
    loss_sum, correct1, correctk, hits = float(totals[0]), int(totals[1]), int(totals[2]), totals[3:].astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = hits / counts
    return EvalResult(loss_sum / n, correct1 / n, correctk / n, per_class, counts)


def print_per_class(result: EvalResult, class_names: list[str], file: Any = None) -> None:
    """A table of accuracy per class (to stdout by default)."""
    file = file or sys.stdout
    width = max([len(n) for n in class_names] + [5])
    print(f"{'class':<{width}}  examples  accuracy", file=file)
    for name, count, acc in zip(class_names, result.counts, result.per_class):
        shown = "     -" if count == 0 else f"{100 * acc:6.2f}%"
        print(f"{name:<{width}}  {count:8d}  {shown}", file=file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m npvit.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .npz checkpoint written by npvit.train (best.npz or last.npz), or "
                                           "its run folder (best.npz, else last.npz), or pretrained:NAME")
    parser.add_argument("--data-dir", help="existing copy of the dataset (archive or extracted folder)")
    parser.add_argument("--cache-dir", help="download cache (default $NPVIT_CACHE or ~/.cache/npvit)")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default="numpy")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--eval-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="score each image by the mean of the logits of it and its mirror image (test-time "
                             "flip; default: as the run that wrote the checkpoint did, see npvit.train --help)")
    parser.add_argument("--eval-shift", type=non_negative_int, default=None, metavar="PIXELS",
                        help="also score each image moved by PIXELS diagonally in the four directions (test-time "
                             "shifts, 0: off; default: as the run that wrote the checkpoint did)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (numbers that are not "
                        "finite as null, with a warning on stderr)")
    args = parser.parse_args(argv)
    expected = (CheckpointError, DataError, BackendUnavailableError, OSError)
    return run_command(lambda: _evaluate_command(args), expected,
                       f" evaluating batches of {args.batch_size} images; try a smaller --batch-size")


def _evaluate_command(args: argparse.Namespace) -> int:
    if args.backend == "numpy":
        keep_freed_memory()  # as npvit.train does: freed activations are not page-faulted back in
    loaded = load(args.checkpoint, args.backend)
    path, model, augmenter = loaded.path, loaded.model, loaded.augmenter
    if not loaded.run:  # a model from another library's file, exported without a run
        raise CheckpointError(f"{path} records no run, so no dataset to evaluate on: evaluate a run folder or a "
                              "checkpoint written by npvit.train")
    data = load_run_dataset(loaded.run, args.data_dir, args.cache_dir, progress=not args.json)
    if len(data.y_test) == 0:
        raise DataError(f"the test split of the run in {path} is empty: nothing to evaluate")
    if data.num_classes != model.config.num_classes:
        raise CheckpointError(f"the dataset has {data.num_classes} classes but the model in {path} was trained "
                              f"for {model.config.num_classes}")
    flip = loaded.eval_flip if args.eval_flip is None else args.eval_flip
    shift = loaded.eval_shift if args.eval_shift is None else args.eval_shift
    misfit = shift_misfit(shift, *data.x_test.shape[1:3])
    if misfit:
        raise DataError(misfit)
    result = evaluate(model, augmenter, data.x_test, data.y_test, args.batch_size, progress=not args.json,
                      label="test", flip=flip, shift=shift)
    if args.json:
        per_class = {name: None if count == 0 else float(acc)  # no examples: no accuracy
                     for name, count, acc in zip(data.class_names, result.counts, result.per_class)}
        text, replaced = dumps_finite(dict(result.as_dict(), eval_flip=flip, eval_shift=shift, per_class=per_class))
        if replaced:
            print(f"warning: not finite, written as null: {', '.join(replaced)}", file=sys.stderr)
        print(text)
        return 0
    print(f"{data.name} test split, {len(data.y_test)} images{describe_views(flip, shift)}: "
          f"loss {result.loss:.4f}  "
          f"top-1 {100 * result.top1:.2f}%  top-5 {100 * result.top5:.2f}%")
    print_per_class(result, data.class_names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
