"""Hand-written forward and backward passes, one concept per module.

Every kernel is a pair of plain functions: ``<name>_forward(...) -> (output, cache)`` and
``<name>_backward(doutput, cache, ...) -> gradients``. The cache holds exactly what the backward pass needs,
the settings the forward pass was called with included (a GELU's kind, a softmax's axis, a patch size), so a
backward pass cannot be run with settings that disagree with its forward pass; only parameters (weights,
gamma) are passed to both. Each pair is called like its twin in ``npvit.reference`` (docs/math.md, section 15).
Kernels take arrays of either backend and find the array module from them; they work in the input dtype.
"""

from .attention import (
    attention_core_backward,
    attention_core_forward,
    mha_backward,
    mha_forward,
)
from .conv2d import conv2d_backward, conv2d_forward
from .cross_entropy import cross_entropy_backward, cross_entropy_forward
from .dense import dense_backward, dense_forward
from .drop_path import drop_path_backward, drop_path_forward
from .dropout import DropoutKey, dropout_backward, dropout_forward, dropout_mask
from .gelu import GELU_KINDS, gelu_backward, gelu_forward
from .layernorm import layernorm_backward, layernorm_forward
from .max_pool import max_pool2d_backward, max_pool2d_forward, pool_output_size
from .patches import patches_backward, patches_forward
from .relu import relu_backward, relu_forward
from .seq_pool import seq_pool_backward, seq_pool_forward
from .soft_cross_entropy import soft_cross_entropy_backward, soft_cross_entropy_forward
from .softmax import softmax_backward, softmax_forward

__all__ = [
    "DropoutKey",
    "GELU_KINDS",
    "attention_core_backward",
    "attention_core_forward",
    "conv2d_backward",
    "conv2d_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dense_backward",
    "dense_forward",
    "drop_path_backward",
    "drop_path_forward",
    "dropout_backward",
    "dropout_forward",
    "dropout_mask",
    "gelu_backward",
    "gelu_forward",
    "layernorm_backward",
    "layernorm_forward",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "mha_backward",
    "mha_forward",
    "patches_backward",
    "patches_forward",
    "pool_output_size",
    "relu_backward",
    "relu_forward",
    "seq_pool_backward",
    "seq_pool_forward",
    "soft_cross_entropy_backward",
    "soft_cross_entropy_forward",
    "softmax_backward",
    "softmax_forward",
]
