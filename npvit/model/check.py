"""A whole-model gradient check: every gradient ``ViT.backward`` returns against central finite differences.

The loss is the training loss, softmax cross-entropy of the logits against integer labels (with optional
label smoothing), with dropout and drop path on. Three things make the check meaningful, and this function
sees to them: float64 (float32 finite differences are too coarse to say anything), one dropout seed for
every evaluation (each perturbed forward pass must drop the very same units) and a backward pass run on the
cache of an unperturbed forward pass.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..gradcheck import GradcheckResult, gradcheck
from ..kernels import cross_entropy_backward, cross_entropy_forward

Array = Any


def gradcheck_model(
    model: Any,
    images: Array,
    labels: Array,
    *,
    names: Sequence[str] | None = None,
    images_too: bool = True,
    dropout_seed: int = 0,
    label_smoothing: float = 0.0,
    max_checks: int | None = None,
    eps: float = 1e-5,
    rtol: float = 1e-6,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> GradcheckResult:
    """Check the gradients of a float64 ``npvit.ViT`` (every parameter, or those in ``names``, and the images
    unless ``images_too=False``) of the mean cross-entropy of ``model.forward(images, training=True,
    dropout_seed=dropout_seed)`` against ``labels``.

    Needs: a model built with ``dtype="float64"`` (a float32 one is refused), ``images`` (B, H, W, C) and
    integer ``labels`` (B,). ``max_checks`` checks that many elements of each tensor (chosen at random, plus
    the largest gradient) instead of all of them: the cost is two forward passes per checked element.
    Parameters are perturbed in place and restored. Returns the GradcheckResult (``.passed``,
    ``.max_error``, ``.report()``); raises AssertionError with the report when an error exceeds ``rtol``
    and ``raise_on_failure`` is left on.
    """
    if np.dtype(getattr(model, "dtype", None)) != np.float64:
        raise ValueError(
            f"gradcheck_model needs a float64 model (float32 finite differences are too coarse), got "
            f"{getattr(model, 'dtype', None)}: build it with npvit.ViT(config, dtype='float64'), or copy a "
            "trained one's parameters into one with load_params(model.params)")
    names = list(model.params) if names is None else list(names)
    unknown = sorted(set(names) - set(model.params))
    if unknown:
        raise ValueError(f"gradcheck_model: the model has no parameters {unknown}; its names are "
                         f"{list(model.params)[:4]} ... (model.params)")
    xp = model.backend.xp
    x = xp.ascontiguousarray(model.check_images(images)).copy()  # (B, H, W, C) float64, perturbed in place
    y = xp.asarray(np.asarray(labels))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"gradcheck_model: {x.shape[0]} images but {y.shape[0]} labels")
    inputs = [model.params[n] for n in names] + ([x] if images_too else [])

    def loss_of(images: Array) -> tuple[Array, tuple]:
        logits = model.forward(images, training=True, dropout_seed=dropout_seed)  # (B, K)
        return cross_entropy_forward(logits, y, label_smoothing)

    def forward(*_: Array) -> Array:
        return loss_of(x)[0]  # the inputs are the arrays the model reads: perturbed in place by gradcheck

    def backward(*inputs_and_dloss: Array) -> list[Array]:
        dloss = inputs_and_dloss[-1]
        dimages = model.backward(cross_entropy_backward(loss_of(x)[1], float(dloss)))
        return [model.grads[n] for n in names] + ([dimages] if images_too else [])

    return gradcheck(forward, backward, inputs, names=names + (["images"] if images_too else []), eps=eps,
                     rtol=rtol, max_checks=max_checks, seed=seed, raise_on_failure=raise_on_failure)
