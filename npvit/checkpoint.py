"""Checkpoints: one ``.npz`` file holding a model, its optimizer and where training stood, with no pickle.

Layout of the archive (every entry a plain numeric array or a JSON string, so ``np.load(...,
allow_pickle=False)`` reads it):

    param/<name>     the model's parameters, as saved (float32 or float64)
    opt/<key>        AdamW.state_dict(): step, m/<name>, v/<name>
    meta             a JSON document: model config, training state (epoch, step), run settings, metrics

Files are written atomically: to a temporary file in the same folder, flushed to disk, then renamed over the
old one. A crash or Ctrl-C during the write leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .backend import to_numpy

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint file is missing, truncated, or not an npvit checkpoint."""


@dataclass
class Checkpoint:
    """What a checkpoint holds, on the host."""

    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    meta: dict[str, Any]


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``.

    The rename is atomic on POSIX and Windows filesystems, so readers see the old file or the new one, never
    a mixture; if ``write`` fails the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(
    path: str | os.PathLike,
    params: Mapping[str, Any],
    optimizer_state: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> None:
    """Write parameters (arrays of any backend), optimizer state and JSON-able metadata to ``path``."""
    arrays: dict[str, np.ndarray] = {f"param/{k}": to_numpy(v) for k, v in params.items()}
    arrays.update({f"opt/{k}": to_numpy(v) for k, v in optimizer_state.items()})
    doc = dict(meta, format_version=FORMAT_VERSION)
    arrays["meta"] = np.array(json.dumps(doc))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint (never unpickles anything)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise CheckpointError(f"{path} is not an npvit checkpoint (no 'meta' entry)")
            meta = json.loads(str(z["meta"]))
            params = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
            optimizer = {k[len("opt/"):]: z[k] for k in z.files if k.startswith("opt/")}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {meta.get('format_version')!r}; this npvit reads {FORMAT_VERSION}"
        )
    return Checkpoint(params=params, optimizer=optimizer, meta=meta)
