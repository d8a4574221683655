"""The PyTorch peer: ``torch``, ``torch.nn.functional`` as ``F`` and ``npvit.torch_reference`` as ``TR``.

torch is optional: without it all three are ``None`` and the suite times npvit alone.
"""

from __future__ import annotations

try:
    import torch
    import torch.nn.functional as F

    from npvit import torch_reference as TR
except ImportError:  # torch is optional: the suite then runs npvit alone
    torch = F = TR = None

__all__ = ["torch", "F", "TR"]
