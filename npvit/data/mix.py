"""Mixup and CutMix: each training image mixed with a partner image, and its target with the partner's.

Mixup (Zhang et al., 2017) blends two images, CutMix (Yun et al., 2019) pastes a box of one into the other;
the target is the same mix of the two labels. This is timm's ``Mixup(mode="elem")`` (``timm/data/mixup.py``,
with ``prob=1``, ``switch_prob=0.5``, ``correct_lam=True``), vectorised over the batch:

    partner of row i of a global batch of T images:   row T - 1 - i        (the batch reversed, as timm flips it)
    kind:     CutMix with probability 1/2 when both alphas are > 0, else the one whose alpha is > 0
    lam  ~ Beta(a, a), a the alpha of the row's kind           the weight of the image's own content and label
    Mixup:    x_i <- lam x_i + (1 - lam) x_partner
    CutMix:   r = sqrt(1 - lam),  ch = floor(H r),  cw = floor(W r),  centre cy ~ U{0..H-1}, cx ~ U{0..W-1}
              y0 = clip(cy - ch // 2, 0, H),  y1 = clip(cy + ch // 2, 0, H)     (x0, x1 the same across)
              x_i[y0:y1, x0:x1] <- x_partner[y0:y1, x0:x1],   lam <- 1 - (y1 - y0)(x1 - x0) / (H W)
    target:   q_i = lam t(y_i) + (1 - lam) t(y_partner),   t(y) = (1 - s) onehot(y) + s / K (label smoothing s)

and the loss is the cross-entropy against q (``npvit.kernels.soft_cross_entropy``). CutMix's lam is corrected
to the area actually pasted, the box being clipped at the border (timm's ``correct_lam``).

Keyed per image, as the Augmenter is: :func:`draw_mix` draws the parameters of a whole global batch of T
images from one generator, in a fixed order, T values per draw:

    1. when both alphas are > 0: u ~ U(0, 1), CutMix where u < 1/2
    2. when the CutMix alpha is > 0: lam ~ Beta(a_cutmix, a_cutmix)
    3. when the Mixup alpha is > 0: lam ~ Beta(a_mixup, a_mixup)           (each row keeps the lam of its kind)
    4. when the CutMix alpha is > 0: cy = min(floor(u H), H - 1), then cx = min(floor(u W), W - 1), u ~ U(0, 1)

and :meth:`MixDraws.rows` takes any rows of them. A process holding rows [a, b) of the batch therefore mixes
exactly as one process holding the whole batch; the partners of its rows, T - b .. T - 1 - a, may be another
process's, whose images it augments itself (``npvit.train.step``).

Mixing acts on the model's inputs, after the Augmenter (normalised and resized: timm mixes the normalised
batch too; both are affine per pixel, so a Mixup blend commutes with them). Boxes and lam are computed in
float64 (timm rounds lam to float32 first), images are blended in their own dtype, targets are formed in
float64. No loop over images, and nothing read back from a device; on CuPy the two Beta draws upload their
shape parameters (two scalars each), as ``Generator.beta`` takes them.

With mixing, the training loss a run reports is the cross-entropy against the mixed targets, and its training
top-1 counts an image as right when the model's top class is the image's own label. Validation and test
images are never mixed.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

import numpy

from ..backend import as_array, get_array_module

Array = Any
SWITCH_PROB = 0.5  # timm's switch_prob: the chance of CutMix when both are on


def check_alphas(mixup: float, cutmix: float) -> tuple[float, float]:
    """(mixup, cutmix) as floats, or ValueError unless each is a finite number >= 0 (0: off)."""
    checked = []
    for name, alpha in (("mixup", mixup), ("cutmix", cutmix)):
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not numpy.isfinite(alpha) \
                or alpha < 0:
            raise ValueError(f"the {name} alpha must be a finite number >= 0 (0: off), got {alpha!r}")
        checked.append(float(alpha))
    return checked[0], checked[1]


@dataclass(frozen=True)
class MixDraws:
    """The mixing parameters of some rows of a batch, each a (rows,) array on one backend.

    Attributes:
        lam: float64, the weight of each image's own content and label (CutMix's corrected to the box).
        use_cutmix: bool, CutMix (True) or Mixup (False).
        y0, y1, x0, x1: intp, the pasted box ``[y0, y1) x [x0, x1)``; empty (all 0) for Mixup rows.
    """

    lam: Array
    use_cutmix: Array
    y0: Array
    y1: Array
    x0: Array
    x1: Array

    def rows(self, index: slice | Array) -> "MixDraws":
        """The draws of rows ``index`` (a slice, or integer indices on the draws' backend)."""
        return MixDraws(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))


def cutmix_boxes(lam: Array, cy: Array, cx: Array, height: int, width: int) -> tuple[Array, Array, Array, Array]:
    """timm's ``rand_bbox`` for every row: a box of sides floor(H sqrt(1 - lam)) and floor(W sqrt(1 - lam))
    centred at (cy, cx), clipped to the image; each side spans 2 (side // 2) pixels before clipping, as there.
    Returns (y0, y1, x0, x1), intp arrays of lam's shape."""
    xp = get_array_module(lam, cy, cx)
    ratio = xp.sqrt(1.0 - lam)
    half_h = xp.floor(height * ratio).astype(xp.intp) // 2
    half_w = xp.floor(width * ratio).astype(xp.intp) // 2
    return (xp.clip(cy - half_h, 0, height), xp.clip(cy + half_h, 0, height),
            xp.clip(cx - half_w, 0, width), xp.clip(cx + half_w, 0, width))


def draw_mix(total: int, height: int, width: int, mixup: float, cutmix: float, rng: Any,
             xp: Any = numpy) -> MixDraws:
    """The mixing parameters of a global batch of ``total`` images of ``height`` x ``width`` pixels, drawn
    from ``rng`` (a NumPy or CuPy Generator) in the order of the module's docstring, as arrays of module ``xp``.
    Both alphas 0 is an error: there is nothing to draw (the caller does not mix)."""
    mixup, cutmix = check_alphas(mixup, cutmix)
    if mixup == 0 and cutmix == 0:
        raise ValueError("draw_mix needs a mixup or cutmix alpha > 0")
    if mixup > 0 and cutmix > 0:
        use_cutmix = as_array(xp, rng.random(total), xp.float64) < SWITCH_PROB
    else:
        use_cutmix = xp.full(total, cutmix > 0, dtype=bool)
    lam_cut = as_array(xp, rng.beta(cutmix, cutmix, total), xp.float64) if cutmix > 0 else None
    lam_mix = as_array(xp, rng.beta(mixup, mixup, total), xp.float64) if mixup > 0 else None
    lam = lam_mix if lam_cut is None else lam_cut if lam_mix is None else xp.where(use_cutmix, lam_cut, lam_mix)
    if cutmix == 0:
        empty = xp.zeros(total, dtype=xp.intp)
        return MixDraws(lam, use_cutmix, empty, empty, empty, empty)

    def centres(n: int) -> Array:  # uniform over 0..n-1, as draw_crops draws offsets
        return xp.minimum(xp.floor(as_array(xp, rng.random(total), xp.float64) * n), n - 1).astype(xp.intp)

    cy = centres(height)
    cx = centres(width)
    y0, y1, x0, x1 = cutmix_boxes(lam, cy, cx, height, width)
    zero = xp.zeros((), dtype=xp.intp)
    y0, y1, x0, x1 = (xp.where(use_cutmix, v, zero) for v in (y0, y1, x0, x1))  # Mixup rows: no box
    area = (y1 - y0) * (x1 - x0)
    lam = xp.where(use_cutmix, 1.0 - area / float(height * width), lam)
    return MixDraws(lam, use_cutmix, y0, y1, x0, x1)


def mix_images(images: Array, partners: Array, draws: MixDraws) -> Array:
    """Each image of ``images`` (B, H, W, C) mixed with its partner (the same row of ``partners``) by the
    draws of its row: Mixup rows ``lam x + (1 - lam) x_partner`` (lam and 1 - lam rounded to the images'
    dtype), CutMix rows the partner's pixels inside the box and the image's own outside. A new array."""
    xp = get_array_module(images, partners)
    if images.ndim != 4 or partners.shape != images.shape:
        raise ValueError(f"images and partners must be two (B, H, W, C) batches of one shape, got "
                         f"{tuple(images.shape)} and {tuple(partners.shape)}")
    if images.dtype.kind != "f" or partners.dtype != images.dtype:
        raise ValueError(f"images and partners must be float images of one dtype (mix after normalising), got "
                         f"{images.dtype} and {partners.dtype}")
    b, h, w, _ = images.shape
    if draws.lam.shape != (b,):
        raise ValueError(f"need the draws of {b} images, got {tuple(draws.lam.shape)}")
    dtype = images.dtype
    lam = draws.lam.astype(dtype)[:, None, None, None]
    rest = (1.0 - draws.lam).astype(dtype)[:, None, None, None]
    blend = images * lam
    blend += partners * rest
    blend = xp.where(draws.use_cutmix[:, None, None, None], images, blend)  # CutMix rows: the image itself...
    ys = xp.arange(h, dtype=xp.intp)[None, :, None]
    xs = xp.arange(w, dtype=xp.intp)[None, None, :]
    inside = ((ys >= draws.y0[:, None, None]) & (ys < draws.y1[:, None, None])
              & (xs >= draws.x0[:, None, None]) & (xs < draws.x1[:, None, None]))  # (B, H, W); Mixup rows: empty
    return xp.where(inside[..., None], partners, blend)  # ...and the partner's pixels in its box


def mix_targets(labels: Array, partner_labels: Array, lam: Array, num_classes: int, label_smoothing: float = 0.0,
                dtype: Any = "float32") -> Array:
    """The soft targets (B, K) of mixed images: ``lam t(label) + (1 - lam) t(partner_label)`` with
    ``t(y) = (1 - s) onehot(y) + s / K``, computed in float64 and returned in ``dtype``. Each row sums to 1."""
    xp = get_array_module(labels, partner_labels, lam)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    classes = xp.arange(num_classes)
    off = label_smoothing / num_classes
    on = 1.0 - label_smoothing + off

    def smoothed(y: Array) -> Array:  # (B, K): on at the label, off elsewhere
        return xp.where(classes == y[:, None], on, off)

    lam = lam.astype(xp.float64)[:, None]
    return (lam * smoothed(labels) + (1.0 - lam) * smoothed(partner_labels)).astype(dtype)
