"""``npvit.export(model, path)``: a model's weights for other tools, the format chosen by the suffix.

    .safetensors   safetensors.numpy; timm's names for a model timm builds, else npvit's (export_safetensors)
    .onnx          an ONNX graph built with the onnx package, opset 17, dynamic batch (export_onnx)
    .pt            a PyTorch state dict: timm's VisionTransformer's or npvit.torch_reference.TorchViT's

The file is written to a temporary name and renamed (npvit.files.atomic_write): an existing file is replaced
whole or not at all. Each carries what a reader needs besides the weights as JSON metadata ("npvit": the config,
the preprocessing, the class names) where the format has a place for it (safetensors, ONNX).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..files import atomic_write
from .errors import InteropError
from .export_onnx import onnx_model
from .export_safetensors import safetensors_bytes
from .export_torch import torch_bytes

FORMATS = (".safetensors", ".onnx", ".pt")


def export_metadata(model: Any, class_names: Sequence[str] | None = None,
                    normalization: Mapping[str, Any] | None = None,
                    run: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The "npvit" metadata entry: config, preprocessing (a timm model's ``preprocess``, or a run's
    ``normalization``: per-channel mean and variance of uint8 pixels), class names, the run's settings."""
    doc: dict[str, Any] = {"config": model.config.to_dict()}
    if run:
        doc["run"] = dict(run)
    if getattr(model, "preprocess", None) is not None:
        doc["preprocess"] = model.preprocess.to_dict()
    if normalization is not None:
        doc["normalization"] = {k: [float(v) for v in normalization[k]] for k in ("mean", "variance")}
    if class_names is not None:
        doc["class_names"] = [str(c) for c in class_names]
    return {"npvit": json.dumps(doc)}


def export(model: Any, path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
           normalization: Mapping[str, Any] | None = None, run: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (an npvit.ViT) to ``path`` in the format its suffix names; returns the path.

    ``class_names``, ``normalization`` ({"mean": [...], "variance": [...]}, a run's input statistics) and
    ``run`` (the run's settings) go into the metadata, so that ``npvit.load`` rebuilds the model with them.
    Raises InteropError for an unknown suffix, MissingInteropExtra when the format's library is missing.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InteropError(f"{path}: the suffix names the format; expected one of {', '.join(FORMATS)}")
    cfg, params = model.config, dict(model.params.items())
    meta = export_metadata(model, class_names, normalization, run)
    if suffix == ".safetensors":
        data = safetensors_bytes(params, cfg, meta)
    elif suffix == ".onnx":
        data = onnx_model(params, cfg, meta).SerializeToString()
    else:
        data = torch_bytes(params, cfg)
    atomic_write(path, lambda f: f.write(data))
    return path
