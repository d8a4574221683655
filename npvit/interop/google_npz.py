"""The ``.npz`` layout of google-research/vision_transformer, read as timm reads it (``_load_weights``).

    Google (Flax)                                                  timm
    embedding/kernel (P, P, C, D), embedding/bias                  patch_embed.proj.weight (D, C, P, P), .bias
    cls (1, 1, D)                                                  cls_token
    Transformer/posembed_input/pos_embedding (1, T, D)             pos_embed
    Transformer/encoderblock_i/LayerNorm_0/scale, bias             blocks.i.norm1.weight, .bias
      .../MultiHeadDotProductAttention_1/{query,key,value}/kernel  blocks.i.attn.qkv.weight: each (D, H, d)
        (D, H, d), bias (H, d)                                       flattened to (D, H d), side by side, transposed
      .../MultiHeadDotProductAttention_1/out/kernel (H, d, D)      blocks.i.attn.proj.weight (D, H d)
      .../LayerNorm_2, MlpBlock_3/Dense_0, Dense_1                 blocks.i.norm2, mlp.fc1, mlp.fc2
    Transformer/encoder_norm/scale, bias                           norm.weight, .bias
    head/kernel (D, K), head/bias                                  head.weight (K, D), head.bias

Flax kernels are (in, out), torch's Linear weights (out, in). Google's gap models normalise every token before
the mean, so their ``encoder_norm`` is timm's ``norm`` (never ``fc_norm``); a ``pre_logits`` layer (some
ImageNet-21k files) is dropped, as timm drops it. Keys may carry the ``opt/target/`` prefix of training
checkpoints (npvit.interop.sources strips it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from ..config import ViTConfig
from .errors import InteropError

BLOCK = "Transformer/encoderblock_{i}/"
ATTN = "MultiHeadDotProductAttention_1/"


def google_depth(arrays: Mapping[str, np.ndarray]) -> int:
    """Number of encoder blocks in a Google layout."""
    found = {int(m.group(1)) for k in arrays if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))}
    return max(found) + 1 if found else 0


def google_to_timm(arrays: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """timm's state dict of a Google layout; InteropError naming the first missing key."""
    def get(key: str) -> np.ndarray:
        if key not in arrays:
            raise InteropError(f"{name} is missing '{key}', which a Google ViT checkpoint has")
        return np.asarray(arrays[key])

    state = {
        "patch_embed.proj.weight": get("embedding/kernel").transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": get("embedding/bias"),
        "pos_embed": get("Transformer/posembed_input/pos_embedding"),
        "norm.weight": get("Transformer/encoder_norm/scale"),
        "norm.bias": get("Transformer/encoder_norm/bias"),
    }
    if "cls" in arrays:
        state["cls_token"] = get("cls")
    if "head/kernel" in arrays:
        state["head.weight"], state["head.bias"] = get("head/kernel").T, get("head/bias")
    for i in range(google_depth(arrays)):
        g, t = BLOCK.format(i=i), f"blocks.{i}."
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            state[f"{t}{norm}.weight"], state[f"{t}{norm}.bias"] = get(f"{g}{ln}/scale"), get(f"{g}{ln}/bias")
        q, k, v = (get(f"{g}{ATTN}{n}/kernel") for n in ("query", "key", "value"))
        state[f"{t}attn.qkv.weight"] = np.concatenate([w.reshape(w.shape[0], -1).T for w in (q, k, v)])
        state[f"{t}attn.qkv.bias"] = np.concatenate(
            [get(f"{g}{ATTN}{n}/bias").reshape(-1) for n in ("query", "key", "value")])
        out = get(f"{g}{ATTN}out/kernel")  # (H, d, D)
        state[f"{t}attn.proj.weight"] = out.reshape(-1, out.shape[-1]).T
        state[f"{t}attn.proj.bias"] = get(f"{g}{ATTN}out/bias")
        for r in range(2):
            dense = f"{g}MlpBlock_3/Dense_{r}/"
            state[f"{t}mlp.fc{r + 1}.weight"], state[f"{t}mlp.fc{r + 1}.bias"] = (
                get(f"{dense}kernel").T, get(f"{dense}bias"))
    return {k: np.ascontiguousarray(v) for k, v in state.items()}


def timm_to_google(state: Mapping[str, np.ndarray], cfg: ViTConfig) -> dict[str, np.ndarray]:
    """The Google layout of timm's state dict of a model of config ``cfg`` (which fixes the heads)."""
    if cfg.fc_norm:
        raise InteropError("Google's layout has no norm after the pooling (fc_norm): its gap models normalise "
                           "every token first (fc_norm=False)")
    h, d, dim = cfg.num_heads, cfg.key_dim, cfg.dim
    out = {
        "embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": state["patch_embed.proj.bias"],
        "Transformer/posembed_input/pos_embedding": state["pos_embed"],
        "Transformer/encoder_norm/scale": state["norm.weight"],
        "Transformer/encoder_norm/bias": state["norm.bias"],
        "head/kernel": state["head.weight"].T,
        "head/bias": state["head.bias"],
    }
    if "cls_token" in state:
        out["cls"] = state["cls_token"]
    for i in range(cfg.depth):
        g, t = BLOCK.format(i=i), f"blocks.{i}."
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{g}{ln}/scale"], out[f"{g}{ln}/bias"] = state[f"{t}{norm}.weight"], state[f"{t}{norm}.bias"]
        qkv_w, qkv_b = state[f"{t}attn.qkv.weight"], state[f"{t}attn.qkv.bias"]
        for j, n in enumerate(("query", "key", "value")):
            out[f"{g}{ATTN}{n}/kernel"] = qkv_w[j * h * d:(j + 1) * h * d].T.reshape(dim, h, d)
            out[f"{g}{ATTN}{n}/bias"] = qkv_b[j * h * d:(j + 1) * h * d].reshape(h, d)
        out[f"{g}{ATTN}out/kernel"] = state[f"{t}attn.proj.weight"].T.reshape(h, d, dim)
        out[f"{g}{ATTN}out/bias"] = state[f"{t}attn.proj.bias"]
        for r in range(2):
            dense = f"{g}MlpBlock_3/Dense_{r}/"
            out[f"{dense}kernel"], out[f"{dense}bias"] = (state[f"{t}mlp.fc{r + 1}.weight"].T,
                                                          state[f"{t}mlp.fc{r + 1}.bias"])
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
