"""npvit: a Vision Transformer written from scratch on raw arrays, for NumPy (CPU) and CuPy (GPU).

    import npvit
    model = npvit.ViT(npvit.ViTConfig.keras(num_classes=100), backend="numpy", dtype="float32", seed=0)
    opt = npvit.AdamW(model.params, lr=1e-3, weight_decay=1e-4)
    logits = model.forward(images, training=True)           # images (B, 72, 72, 3), normalised
    loss, cache = npvit.cross_entropy_forward(logits, labels)
    model.backward(npvit.cross_entropy_backward(cache))     # fills model.grads
    opt.step(model.grads)
"""

from .backend import (
    Backend,
    BackendUnavailableError,
    available_backends,
    get_array_module,
    get_backend,
)
from .config import ViTConfig
from .gradcheck import GradcheckResult, check_backward
from .kernels import cross_entropy_backward, cross_entropy_forward
from .model import VisionTransformer, ViT
from .optim.adamw import AdamW

gradcheck = check_backward

__version__ = "0.1.0"

__all__ = [
    "AdamW",
    "Backend",
    "BackendUnavailableError",
    "GradcheckResult",
    "ViT",
    "ViTConfig",
    "VisionTransformer",
    "available_backends",
    "check_backward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "get_array_module",
    "get_backend",
    "gradcheck",
    "__version__",
]
