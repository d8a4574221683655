"""timm models with random weights, saved the ways timm and Google publish them, for the interop tests.

Nothing is downloaded: ``timm.create_model(arch, pretrained=False)`` builds the architecture, every parameter
is moved off its initial value (zeros and ones would hide a transposed bias or a skipped norm), and the
weights are written with safetensors (timm's names) or in Google's .npz layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def random_timm(arch: str, seed: int = 0, **kwargs: Any) -> Any:
    """``timm.create_model(arch, pretrained=False, **kwargs)`` in evaluation mode, every parameter perturbed."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def state_arrays(model: Any) -> dict[str, np.ndarray]:
    """The model's state dict as contiguous float32 NumPy arrays."""
    return {k: np.ascontiguousarray(v.detach().float().numpy()) for k, v in model.state_dict().items()}


def save_safetensors(model: Any, path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file(state_arrays(model), str(path))
    return path


def timm_logits(model: Any, images: np.ndarray) -> np.ndarray:
    """timm's logits in float64 for channels-last images (B, S, S, C), as npvit takes them."""
    import torch

    model = model.double().eval()
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
    return out.numpy()


def relative(a: Any, b: Any) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


WORST: dict[str, float] = {}
"""Bridge -> the worst relative difference measured in this session (printed at the end of the test run)."""


def measured(bridge: str, value: float) -> float:
    """Record ``value`` for ``bridge`` (the worst one is kept) and return it, for an assert."""
    WORST[bridge] = max(WORST.get(bridge, 0.0), float(value))
    return float(value)
