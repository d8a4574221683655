"""Which images each rank takes: a disjoint, contiguous part of every global batch, in one process's order.

With N ranks and a global batch of B images (``--batch-size`` stays the global batch), rank r takes

    part_r = batch[start_r : start_r + b_r],   b_r = B // N + (1 if r < B % N else 0),   sum_r b_r = B

so the parts, in rank order, are the batch one process would take (``rank_slice``). Each rank's loss is the
mean over its own b_r images; its output gradient (dlogits) scaled by b_r / B (``npvit.train.step``) makes the
sum over ranks of the parameter gradients

    sum_r (b_r / B) * (1 / b_r) * sum_{i in part_r} dL_i/dtheta = (1 / B) * sum_{i in batch} dL_i/dtheta,

the gradient of the mean over the global batch, as one process computes it. The same parts split an
evaluation set across ranks; the ranks then add loss * count and correct counts, which is exact.

A part is empty only when the batch has fewer images than there are ranks. The configured batch size must
be at least N (:func:`check_batch_size`); the last, smaller batch of an epoch may still be, and a rank with
no image contributes zero to every sum.
"""

from __future__ import annotations

from ..parallel import shard_slices  # the one helper that cuts a range into near-equal slices
from .errors import DistributedError

__all__ = ["check_batch_size", "rank_slice"]


def check_batch_size(batch_size: int, size: int) -> None:
    """Refuse a global batch smaller than the number of processes (some would never have an image)."""
    if batch_size < size:
        raise DistributedError(
            f"--batch-size {batch_size} is smaller than the {size} processes: each process takes a part of every "
            f"batch, so the batch needs at least one image per process. Use --batch-size {size} or more, or "
            "fewer processes")


def rank_slice(batch: int, rank: int, size: int) -> slice:
    """The part of a global batch of ``batch`` images that ``rank`` of ``size`` takes: contiguous, disjoint,
    sizes differing by at most one (the first ``batch % size`` ranks take one more); empty when the batch
    has fewer images than there are ranks."""
    parts = shard_slices(batch, size)  # min(batch, size) non-empty parts
    return parts[rank] if rank < len(parts) else slice(batch, batch)
