"""Evaluation split across ranks: each rank evaluates its part of the split, the ranks add exact sums.

The sums are, over the images i of the split,

    loss_sum = sum_i loss_i,   correct1 = sum_i [label_i is the top class],   correct5 = sum_i [label_i in the top 5]
    hits_c   = sum_{i of class c} [label_i is the top class]

each rank's part computed by :func:`npvit.evaluate.evaluate` on its contiguous slice (``rank_slice``), then
added across ranks in one ``allreduce_scalars``; the means divide by the split's size. Counts add exactly;
the loss sum differs from one process's only in the order of float64 additions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..distributed.communicator import Communicator
from ..distributed.split import rank_slice
from ..evaluate import EvalResult, evaluate


def evaluate_split(comm: Communicator, model: Any, augmenter: Any, images: np.ndarray, labels: np.ndarray,
                   batch_size: int = 256, progress: bool = False, label: str = "eval",
                   flip: bool = False, shift: int = 0) -> EvalResult:
    """``evaluate`` (:func:`npvit.evaluate.evaluate`) over ``images``/``labels`` (the whole split, on every
    rank), each rank taking its part; every rank gets the result for the whole split. Rank 0 alone shows
    progress. One process gets ``evaluate``'s own result. ``flip``, ``shift``: test-time flip and shifts, as
    ``evaluate``'s."""
    if comm.size == 1:
        return evaluate(model, augmenter, images, labels, batch_size, progress=progress, label=label, flip=flip,
                        shift=shift)
    n, k = len(images), model.config.num_classes
    if n == 0:
        raise ValueError("nothing to evaluate: the split is empty")
    part = rank_slice(n, comm.rank, comm.size)
    mine = part.stop - part.start
    sums = np.zeros(3 + k)
    if mine:
        r = evaluate(model, augmenter, images[part], labels[part], batch_size,
                     progress=progress and comm.rank == 0, label=label, flip=flip, shift=shift)
        # evaluate returns means; times the part's size they are the sums again (counts exactly, once rounded).
        hits = np.rint(np.nan_to_num(r.per_class) * r.counts)
        sums[:] = [r.loss * mine, round(r.top1 * mine), round(r.top5 * mine), *hits]
    total = np.asarray(comm.allreduce_scalars(sums.tolist()))
    counts = np.bincount(labels, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = total[3:] / counts
    return EvalResult(float(total[0] / n), float(total[1] / n), float(total[2] / n), per_class, counts)
