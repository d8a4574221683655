"""``npvit.load_timm``: a pretrained ViT from timm's or Google's files, as an npvit model to fine-tune or study.

    model = npvit.load_timm("model.safetensors", "vit_base_patch16_224")              # timm's names
    model = npvit.load_timm("ViT-B_16.npz", "vit_base_patch16_224")                   # Google's layout
    model = npvit.load_timm(path, "vit_tiny_patch16_224", num_classes=10, image_size=64)
    logits = model.forward(model.preprocess.batch(pil_images))

``arch`` fixes what the arrays' shapes cannot (the number of heads); the file's width and patch size must be
the arch's. The file decides the rest: its depth, a class token or none, the norm before or after the pooling
(``fc_norm``), the image size its position embedding was trained at. ``num_classes`` other than the file's
gives a new head, initialised as timm's ``reset_classifier`` does (torch's Linear default: weight and bias
uniform within 1 / sqrt(width)); ``image_size`` other than the file's resamples the position embedding as timm does (bicubic
with antialiasing for timm's files, bilinear for Google's; the class position kept). The model's
``preprocess`` is the arch's timm preprocessing (npvit.interop.preprocess), at the model's image size.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..backend import Backend
from ..config import TIMM_ARCHS, TIMM_SIZES, ViTConfig
from ..model import ViT
from .errors import InteropError
from .google_npz import google_to_timm
from .preprocess import Preprocess
from .resample import resample_pos_embed
from .sources import Weights, read_weights
from .timm_names import from_timm, timm_name, timm_shape

# timm extras npvit does not build, by a key that betrays each: what to say when a file has one.
EXTRAS = {"reg_token": "register tokens", ".ls1.": "layer scale", ".q_norm.": "query/key norms",
          "norm_pre.": "a norm before the blocks (CLIP)", "attn_pool.": "attention pooling (MAP head)",
          ".mlp.norm.": "a norm inside the MLP", "patch_embed.norm.": "a norm after the patch embedding"}


def load_timm(source: str | os.PathLike | Mapping[str, Any], arch: str | None, *, global_pool: str = "token",
              num_classes: int | None = None, image_size: int | None = None, dtype: str = "float32",
              backend: str | Backend = "numpy", fc_norm: bool | None = None,
              preprocess: Preprocess | Mapping[str, Any] | None = None, seed: int = 0) -> ViT:
    """The ViT held by ``source`` (a timm ``.safetensors`` file, a Google ``.npz`` or a mapping of arrays under
    timm's names) for timm architecture ``arch`` (None: the one the file's metadata names, for files
    ``npvit.export`` wrote).

    ``global_pool``: "token" (the class token's output) or "avg" (the patch tokens' mean), as timm's.
    ``fc_norm``: the final norm after the pooling; None: as the file has it (a ``fc_norm`` entry, or none).
    ``preprocess``: a Preprocess, or fields to change in the arch's (e.g. ``{"mean": ..., "std": ...}``).
    ``seed`` draws a new head's weights. Raises InteropError (a ValueError) naming what does not fit.
    """
    weights = read_weights(source)
    if weights.kind == "npvit":
        raise InteropError(f"{weights.name} holds npvit's own names (a model npvit.export wrote outside timm's "
                           "arrangement): read it with npvit.load")
    arch = arch or weights.metadata.get("npvit.timm_arch")
    if not arch:
        raise InteropError(f"which timm architecture does {weights.name} hold? Pass arch= (one of "
                           f"{', '.join(TIMM_ARCHS)})")
    if global_pool not in ("token", "avg"):
        raise InteropError(f"global_pool must be 'token' or 'avg' (timm's names), got {global_pool!r}")
    state = _timm_state(weights)
    found = _describe(state, weights.name)
    base = _config(arch)
    _check_arch(found, base, arch, weights.name)
    if global_pool == "token" and not found["class_token"]:
        raise InteropError(f"{weights.name} has no class token (no 'cls_token'): load it with global_pool='avg'")
    if num_classes is None:
        if found["classes"] is None:
            raise InteropError(f"{weights.name} has no classifier head: pass num_classes= for a new one")
        num_classes = found["classes"]
    side = found["grid"] * base.patch_size if image_size is None else image_size
    try:
        cfg = dataclasses.replace(
            ViTConfig.timm(arch, num_classes=num_classes, image_size=side, global_pool=global_pool,
                           class_token=found["class_token"], fc_norm=found["fc_norm"] if fc_norm is None else fc_norm),
            depth=found["depth"])
    except ValueError as exc:
        raise InteropError(f"{weights.name} cannot be loaded so: {exc}") from None
    if cfg.grid_size != found["grid"]:
        pos = state["pos_embed"].reshape(-1, cfg.dim)
        state["pos_embed"] = resample_pos_embed(pos, cfg.grid_size, int(cfg.has_class_token),
                                                weights.interpolation)[None]
    if num_classes != found["classes"]:  # timm's reset_classifier: a fresh nn.Linear(width, num_classes)
        rng, bound = np.random.default_rng(seed), 1.0 / math.sqrt(cfg.dim)
        state["head.weight"] = rng.uniform(-bound, bound, size=(num_classes, cfg.dim))
        state["head.bias"] = rng.uniform(-bound, bound, size=num_classes)
    model = ViT(cfg, backend=backend, dtype=dtype, seed=seed)
    shapes = {n: tuple(p.shape) for n, p in model.params.items()}
    check_timm_names(state, shapes, cfg, weights.name)
    model.load_params(from_timm(state, list(shapes), cfg))
    if isinstance(preprocess, Preprocess):
        model.preprocess = preprocess
    else:
        model.preprocess = Preprocess.for_arch(arch, cfg.image_size, **dict(preprocess or {}))
    return model


def _timm_state(weights: Weights) -> dict[str, np.ndarray]:
    if weights.kind == "google":
        return google_to_timm(weights.arrays, weights.name)
    # timm's checkpoint filter drops the representation layer of old ImageNet-21k files; so does npvit
    return {k: np.asarray(v) for k, v in weights.arrays.items() if not k.startswith("pre_logits.")}


def _config(arch: str) -> ViTConfig:
    try:
        return ViTConfig.timm(arch)
    except ValueError as exc:
        raise InteropError(str(exc)) from None


def _describe(state: Mapping[str, np.ndarray], name: str) -> dict[str, Any]:
    """What the file's arrays say: width, patch, channels, depth, class token, grid, fc_norm, classes."""
    for key in ("patch_embed.proj.weight", "pos_embed"):
        if key not in state:
            raise InteropError(f"{name} is missing '{key}', which every timm ViT has")
    patch = state["patch_embed.proj.weight"]
    if patch.ndim != 4 or patch.shape[2] != patch.shape[3]:
        raise InteropError(f"{name}: 'patch_embed.proj.weight' has shape {patch.shape}, not a Conv2d kernel "
                           "(width, channels, patch, patch)")
    width = patch.shape[0]
    class_token = "cls_token" in state
    pos = state["pos_embed"]
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != width:
        raise InteropError(f"{name}: 'pos_embed' has shape {pos.shape}, expected (1, tokens, {width})")
    patches = pos.shape[1] - int(class_token)
    grid = math.isqrt(max(patches, 0))
    if grid * grid != patches or grid == 0:
        raise InteropError(f"{name}: 'pos_embed' holds {patches} patch positions, not a square grid (a file "
                           "whose position embedding leaves out the class position, timm's no_embed_class, is "
                           "not a plain ViT)")
    depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    head = state.get("head.weight")
    return dict(width=width, patch=patch.shape[2], channels=patch.shape[1], depth=depth, class_token=class_token,
                grid=grid, fc_norm="fc_norm.weight" in state, classes=None if head is None else head.shape[0])


def _check_arch(found: dict[str, Any], base: ViTConfig, arch: str, name: str) -> None:
    expected = dict(width=base.dim, patch=base.patch_size, channels=base.channels)
    wrong = [f"{k} {found[k]} (the arch has {v})" for k, v in expected.items() if found[k] != v]
    if found["depth"] == 0:
        raise InteropError(f"{name} has no transformer blocks ('blocks.0. ...')")
    if wrong:
        fits = [a for a in TIMM_ARCHS if TIMM_SIZES[a.split("_")[1]][0] == found["width"]
                and a.split("_")[2] == f"patch{found['patch']}"]
        hint = f"; it fits {' or '.join(fits)}" if fits else ""
        raise InteropError(f"{name} does not hold {arch}: its {', '.join(wrong)}{hint}")


def check_timm_names(state: Mapping[str, np.ndarray], shapes: dict[str, tuple[int, ...]], cfg: ViTConfig,
                     name: str) -> None:
    """InteropError unless ``state`` holds exactly timm's names of the npvit parameters ``shapes`` (name ->
    npvit shape), each with its timm shape and floating-point numbers."""
    expected = {timm_name(n): timm_shape(n, s, cfg) for n, s in shapes.items()}
    extra = sorted(set(state) - set(expected))
    for marker, what in EXTRAS.items():
        if any(marker in k for k in extra):
            raise InteropError(f"{name} has {what} ({[k for k in extra if marker in k][0]}), which npvit's plain "
                               "ViT does not have: it is not one of the plain ViT architectures")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise InteropError(f"{name} is missing {len(missing)} entr{'y' if len(missing) == 1 else 'ies'} the model "
                           f"needs: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    if extra:
        raise InteropError(f"{name} has entries the model has no place for: {', '.join(extra[:4])}"
                           f"{' ...' if len(extra) > 4 else ''}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise InteropError(f"{name}: '{key}' has shape {tuple(state[key].shape)}, the model needs {shape}")
        if not np.issubdtype(state[key].dtype, np.floating):
            raise InteropError(f"{name}: '{key}' holds {state[key].dtype}, not floating-point numbers")
