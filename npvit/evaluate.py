"""Evaluate a trained model: loss, top-1 and top-5 accuracy, and accuracy per class.

    python -m npvit.evaluate runs/cifar10/best.npz                # the test split of the run's dataset
    python -m npvit.evaluate runs/cifar10                         # a run folder: its best.npz, else last.npz
    python -m npvit.evaluate runs/cifar10/best.npz --data-dir /data/cifar-10-binary.tar.gz --backend cupy
    python -m npvit.evaluate runs/cifar10 --eval-flip             # test-time flip (default: as the run did)
    python -m npvit.evaluate pretrained:cifar10 --data-dir PATH   # the model shipped with npvit

``evaluate`` is also what the training program uses for its validation and test numbers.

Test-time flip (``--eval-flip``) scores each image by the mean of the logits of the image and of its mirror
image (``inference_logits``). A model trained with random horizontal flips has learnt that the two are the
same class; averaging its two answers cancels part of its error, for twice the evaluation time. The mean of
logits is the normalised geometric mean of the two softmax distributions (softmax ignores a per-row constant),
so the loss is still the cross-entropy of a distribution.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import BACKEND_NAMES, BackendUnavailableError, to_numpy
from .checkpoint import CheckpointError
from .cli.allocator import keep_freed_memory
from .cli.args import positive_int
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


def evaluate(model: ViT, augmenter: Augmenter, images: np.ndarray, labels: np.ndarray, batch_size: int = 256,
             progress: bool = False, label: str = "eval", flip: bool = False) -> EvalResult:
    """Run ``model`` in inference mode over host ``images`` (uint8, un-normalised) and integer ``labels``;
    with ``flip``, on the mean of the logits of each image and its mirror image (``inference_logits``)."""
    backend, k = model.backend, model.config.num_classes
    n = len(images)
    if n == 0:
        raise ValueError("nothing to evaluate: the split is empty")
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
        logits = inference_logits(model, augmenter(x, training=False), flip)
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
    result = evaluate(model, augmenter, data.x_test, data.y_test, args.batch_size, progress=not args.json,
                      label="test", flip=flip)
    if args.json:
        per_class = {name: None if count == 0 else float(acc)  # no examples: no accuracy
                     for name, count, acc in zip(data.class_names, result.counts, result.per_class)}
        text, replaced = dumps_finite(dict(result.as_dict(), eval_flip=flip, per_class=per_class))
        if replaced:
            print(f"warning: not finite, written as null: {', '.join(replaced)}", file=sys.stderr)
        print(text)
        return 0
    print(f"{data.name} test split, {len(data.y_test)} images{', test-time flip' if flip else ''}: "
          f"loss {result.loss:.4f}  "
          f"top-1 {100 * result.top1:.2f}%  top-5 {100 * result.top5:.2f}%")
    print_per_class(result, data.class_names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
