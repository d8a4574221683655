"""npvit: a Vision Transformer written from scratch on raw arrays, for NumPy (CPU) and CuPy (GPU).

    import npvit
    model = npvit.ViT(npvit.ViTConfig.keras(num_classes=100), backend="numpy", dtype="float32", seed=0)
    opt = npvit.AdamW(model.params, lr=1e-3, weight_decay=1e-4)
    logits = model.forward(images, training=True)           # images (B, 72, 72, 3), normalised
    loss, cache = npvit.cross_entropy_forward(logits, labels)
    model.backward(npvit.cross_entropy_backward(cache))     # fills model.grads
    opt.step(model.grads)

    model = npvit.load_timm("model.safetensors", "vit_base_patch16_224")   # timm's or Google's weights
    npvit.export(model, "model.onnx")                                      # .safetensors, .onnx, .pt

    loaded = npvit.pretrained("cifar10")      # the model shipped with the package: npvit.load("pretrained:cifar10")
    npvit.list_pretrained()                   # the names shipped
"""

import warnings
from typing import Any

from .backend import (
    Backend,
    BackendUnavailableError,
    available_backends,
    get_array_module,
    get_backend,
)
from .config import ViTConfig
from .gradcheck import GradcheckResult, gradcheck
from .interop import export, load_timm
from .kernels import cross_entropy_backward, cross_entropy_forward
from .loading import LoadedModel, load, pretrained
from .model import ViT
from .model.check import gradcheck_model
from .optim.adamw import AdamW
from .zoo import list_pretrained

__version__ = "0.1.0"

__all__ = [
    "AdamW",
    "Backend",
    "BackendUnavailableError",
    "GradcheckResult",
    "LoadedModel",
    "ViT",
    "ViTConfig",
    "available_backends",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "export",
    "get_array_module",
    "get_backend",
    "gradcheck",
    "gradcheck_model",
    "list_pretrained",
    "load",
    "load_timm",
    "pretrained",
    "__version__",
]

_DEPRECATED = {"VisionTransformer": ("ViT", ViT), "check_backward": ("gradcheck", gradcheck)}


def __getattr__(name: str) -> Any:
    # The second names of the model and of the gradient checker, kept for one release with a warning.
    if name in _DEPRECATED:
        new, value = _DEPRECATED[name]
        warnings.warn(f"npvit.{name} is deprecated: use npvit.{new}", DeprecationWarning, stacklevel=2)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
