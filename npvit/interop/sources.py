"""Reading another library's weights: a timm ``.safetensors`` file, a Google ``.npz``, or a mapping of arrays.

Nothing is ever unpickled. PyTorch's ``.bin`` / ``.pth`` / ``.pt`` files are pickles, which run code when
loaded, so they are refused by their suffix; a PyTorch save renamed ``.safetensors`` fails safetensors' own
header check (which never runs code) and is named as what it is; ``.npz`` files are read with
``allow_pickle=False``.

``read_weights(source)`` returns the arrays with the file's own names and layouts, which convention they follow
("timm": ``patch_embed.proj.weight`` ...; "google": ``embedding/kernel`` ...), the file's metadata (a
safetensors header's ``__metadata__``) and a name for messages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InteropError, require

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle")
GOOGLE_PREFIXES = ("", "opt/target/")  # the layouts timm's _load_weights reads; big_vision's is another


@dataclass
class Weights:
    """Arrays under the names of the library that wrote them."""

    arrays: dict[str, np.ndarray]
    kind: str  # "timm", "google" or "npvit"
    name: str  # the file, or "the mapping", for messages
    metadata: dict[str, str] = field(default_factory=dict)
    interpolation: str = "bicubic"  # how timm resamples this kind's position embedding (see npvit.interop.resample)


def read_weights(source: str | os.PathLike | Mapping[str, Any]) -> Weights:
    """The arrays of ``source``: a ``.safetensors`` file, a Google ``.npz`` or a mapping of arrays (NumPy, CuPy
    or torch tensors). Raises InteropError naming what is wrong."""
    if isinstance(source, Mapping):
        arrays = {str(k): _host_array(v, k) for k, v in source.items()}
        return _classified(arrays, "the mapping", {})
    path = Path(source)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InteropError(
            f"{path} is a PyTorch pickle file ({path.suffix}): loading one runs whatever code it holds, so npvit "
            "never unpickles it. Get the model's .safetensors file instead (timm publishes one for each model on "
            "the Hugging Face Hub), or convert it where you trust it: safetensors.torch.save_file(torch.load(f), "
            "'model.safetensors')")
    if not path.is_file():
        raise InteropError(f"{path}: no such file")
    if path.suffix.lower() == ".safetensors":
        arrays, metadata = _read_safetensors(path)
        return _classified(arrays, str(path), metadata)
    if path.suffix.lower() == ".npz":
        return _classified(_read_npz(path), str(path), {})
    raise InteropError(f"{path}: expected a .safetensors file (timm's names) or a Google .npz file, not "
                       f"{path.suffix or 'a file without a suffix'}")


def _host_array(value: Any, name: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: through float32 when NumPy has no such dtype (bfloat16)
        value = value.detach().cpu()
        value = value.float() if str(value.dtype) == "torch.bfloat16" else value
        value = value.numpy()
    elif hasattr(value, "get"):  # a CuPy array
        value = value.get()
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InteropError(f"entry {name!r} of the mapping is not an array of numbers (dtype {array.dtype})")
    return array


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    require("safetensors", "reading .safetensors files")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            arrays = {k: np.asarray(f.get_tensor(k)) for k in f.keys()}
    except Exception as exc:  # safetensors' errors (SafetensorError, OSError, TypeError for a dtype NumPy lacks)
        with open(path, "rb") as f:
            head = f.read(2)
        what = " (it is a zip archive: a PyTorch save, which npvit never unpickles)" if head == b"PK" else ""
        raise InteropError(f"{path} cannot be read as safetensors{what}: {exc}") from None
    return arrays, metadata


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except ValueError as exc:  # an object array, which only a pickle could hold
        raise InteropError(f"{path} holds arrays that only a pickle can read; npvit never unpickles ({exc})") \
            from None
    except (OSError, EOFError) as exc:
        raise InteropError(f"{path} cannot be read as .npz (a zip of .npy arrays): {exc}") from None


def _classified(arrays: dict[str, np.ndarray], name: str, metadata: dict[str, str]) -> Weights:
    if "patch_embed.proj.w" in arrays or "tokenizer.conv0.w" in arrays:  # npvit's names: patches or CCT's convs
        return Weights(arrays, "npvit", name, metadata)
    if "patch_embed.proj.weight" in arrays:
        return Weights(arrays, "timm", name, metadata)
    for prefix in GOOGLE_PREFIXES:
        if f"{prefix}embedding/kernel" in arrays:
            found = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            return Weights(found, "google", name, metadata, interpolation="bilinear")
    if any(k.startswith(("params/", "pos_embedding")) for k in arrays):
        raise InteropError(f"{name} is a big_vision checkpoint (params/..., pos_embedding); npvit reads the "
                           "layout of google-research/vision_transformer (embedding/kernel, Transformer/...)")
    shown = ", ".join(sorted(arrays)[:6]) or "nothing"
    raise InteropError(f"{name} is not a ViT checkpoint that npvit knows: it has neither timm's "
                       f"'patch_embed.proj.weight' nor Google's 'embedding/kernel' (it holds {shown}"
                       f"{' ...' if len(arrays) > 6 else ''})")
