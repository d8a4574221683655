"""Reading back a file ``npvit.export`` wrote: the config, preprocessing and class names from its metadata.

A ``.safetensors`` export carries "npvit" metadata (npvit.interop.export.export_metadata); with it the model is
rebuilt exactly, under npvit's names (the Keras arrangement) or timm's (the timm arrangement), without an
arch. The arrays come back as they were written.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..backend import Backend
from ..config import ViTConfig
from ..model import ViT
from .errors import InteropError
from .load import check_timm_names
from .preprocess import Preprocess
from .sources import Weights, read_weights
from .timm_names import from_timm, timm_expressible


def npvit_metadata(weights: Weights) -> dict[str, Any] | None:
    """The "npvit" metadata of an export (config checked), or None for a file without it."""
    text = weights.metadata.get("npvit")
    if text is None:
        return None
    try:
        doc = json.loads(text)
        doc["config"] = ViTConfig.from_dict(doc["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InteropError(f"{weights.name}: its npvit metadata is damaged ({exc})") from None
    names = doc.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != doc["config"].num_classes
                              or not all(isinstance(n, str) for n in names)):
        raise InteropError(f"{weights.name}: its class_names must be {doc['config'].num_classes} strings")
    if doc.get("preprocess") is not None:
        doc["preprocess"] = Preprocess.from_dict(doc["preprocess"])
    return doc


def load_export(source: str | os.PathLike, backend: str | Backend = "numpy",
                dtype: str = "float32") -> tuple[ViT, dict[str, Any]]:
    """The model of an npvit export and its metadata (config, preprocess, normalization, class_names)."""
    weights = read_weights(source)
    doc = npvit_metadata(weights)
    if doc is None:
        raise InteropError(f"{weights.name} was not written by npvit.export (no npvit metadata): name its timm "
                           "architecture (arch=, --arch)")
    cfg = doc["config"]
    model = ViT(cfg, backend=backend, dtype=dtype)
    if weights.kind == "timm":
        if not timm_expressible(cfg):
            raise InteropError(f"{weights.name} holds timm's names but its config is not a timm ViT")
        shapes = {n: tuple(p.shape) for n, p in model.params.items()}
        check_timm_names(weights.arrays, shapes, cfg, weights.name)
        params = from_timm(weights.arrays, list(shapes), cfg)
    else:
        params = weights.arrays
    try:
        model.load_params(params)
    except ValueError as exc:
        raise InteropError(f"{weights.name} does not fit the config its metadata records: {exc}") from None
    model.preprocess = doc.get("preprocess")
    return model, doc
