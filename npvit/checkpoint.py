"""Checkpoints: one ``.npz`` file holding a model, its optimizer and where training stood, with no pickle.

Layout of the archive (every entry a plain numeric array or a JSON string, so ``np.load(...,
allow_pickle=False)`` reads it):

    param/<name>     the model's parameters, as saved (float32 or float64)
    opt/<key>        AdamW.state_dict(): step, m/<name>, v/<name>
    ema/<name>       with --ema, in last.npz only: the moving average of each parameter (WeightEMA.state_dict),
                     so that --resume continues it exactly (best.npz holds the average as its param/ instead)
    meta             a JSON document: model config, training state (epoch, step), run settings, metrics

Files are written atomically (:func:`npvit.files.atomic_write`): to a temporary file in the same folder,
flushed to disk, then renamed over the old one. A crash or Ctrl-C during the write leaves the previous
checkpoint as it was.

A checkpoint is read as untrusted input: nothing is unpickled, every array comes only from bytes that are
in the file (its ``.npy`` header is checked against the member's size before anything is allocated, and a
compressed member may not expand more than :data:`MAX_EXPANSION` times), and :func:`check_model_meta`
validates every field of the metadata a model is rebuilt from -- types, ranges, finiteness, and a model
config whose parameter count matches the arrays actually stored -- so a damaged or hostile file gives a
:class:`CheckpointError` that says what is wrong, never a traceback or an unbounded allocation.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .backend import to_numpy
from .config import ViTConfig
from .data import DataError
from .files import atomic_write, is_finite_number, is_int
from .settings import SETTINGS, check_data_settings, check_value

__all__ = ["Checkpoint", "CheckpointError", "ModelMeta", "atomic_write", "check_model_meta", "check_run_settings",
           "load_checkpoint", "read_arrays", "resolve_checkpoint", "save_checkpoint"]

FORMAT_VERSION = 1

#: A compressed member (np.savez_compressed) may expand at most this many times: float weights compress
#: by a few percent, a zip bomb by a factor of a thousand.
MAX_EXPANSION = 16

#: dtype kinds a checkpoint array may have: parameters and moments (float), the step (int), meta (text).
ARRAY_KINDS = "biufU"

#: Checkpoint file names a run folder holds, in the order a folder given instead of a file is searched.
RUN_CHECKPOINTS = ("best.npz", "last.npz")


class CheckpointError(Exception):
    """A checkpoint file is missing, truncated, or not an npvit checkpoint; the message says which and why."""


@dataclass
class Checkpoint:
    """What a checkpoint holds, on the host."""

    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    meta: dict[str, Any]
    ema: dict[str, np.ndarray] = field(default_factory=dict)  # the moving average's weights, if saved


def save_checkpoint(
    path: str | os.PathLike,
    params: Mapping[str, Any],
    optimizer_state: Mapping[str, Any],
    meta: Mapping[str, Any],
    ema: Mapping[str, Any] | None = None,
) -> None:
    """Write parameters (arrays of any backend), optimizer state, JSON-able metadata and, if given, the moving
    average of the weights (``ema``, name -> array) to ``path``."""
    arrays: dict[str, np.ndarray] = {f"param/{k}": to_numpy(v) for k, v in params.items()}
    arrays.update({f"opt/{k}": to_numpy(v) for k, v in optimizer_state.items()})
    arrays.update({f"ema/{k}": to_numpy(v) for k, v in (ema or {}).items()})
    doc = dict(meta, format_version=FORMAT_VERSION)
    arrays["meta"] = np.array(json.dumps(doc))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file as given, or for a run folder its ``best.npz``, else its ``last.npz``."""
    path = Path(path)
    if path.is_dir():
        for name in RUN_CHECKPOINTS:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no checkpoint ({' or '.join(RUN_CHECKPOINTS)}): the run has not "
                              f"saved one yet, or this is not a run folder written by npvit.train")
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint (never unpickles anything).

    Raises :class:`CheckpointError` when ``path`` is missing, not a ``.npz`` (a ``.npy`` renamed, say),
    truncated, or holds anything but plain arrays and a JSON object as its metadata.
    """
    path = Path(path)
    arrays = read_arrays(path)
    meta = _read_meta(arrays.pop("meta", None), path)
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    optimizer = {k[len("opt/"):]: v for k, v in arrays.items() if k.startswith("opt/")}
    ema = {k[len("ema/"):]: v for k, v in arrays.items() if k.startswith("ema/")}
    return Checkpoint(params=params, optimizer=optimizer, meta=meta, ema=ema)


CHECKPOINT_HINT = "Pass a best.npz or last.npz written by npvit.train, or its run folder."


def read_arrays(path: str | os.PathLike, what: str = "checkpoint",
                hint: str = CHECKPOINT_HINT) -> dict[str, np.ndarray]:
    """The plain arrays of an ``.npz`` file, read as untrusted input (module docstring): member name (without
    ``.npy``) -> array. ``what`` names the file in errors and ``hint`` says what to use instead.

    Raises :class:`CheckpointError` when ``path`` is missing, not a zip of ``.npy`` members, or damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if not zipfile.is_zipfile(path):
            kind = "a single .npy array, not a .npz" if magic == b"\x93NUMPY" else "not a .npz (zip) file"
            raise CheckpointError(f"cannot read {what} {path}: it is {kind}. {hint}")
        disk_size = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            arrays = {}
            names = zf.namelist()
            if len(names) != len(set(names)):
                twice = sorted({n for n in names if names.count(n) > 1})
                raise CheckpointError(f"{path} holds member {twice[0]!r} more than once (a zip written by hand "
                                      f"or appended to); which copy counts is ambiguous, so it is refused. Use "
                                      f"another {what}.")
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise CheckpointError(f"{path} is not an npvit {what}: it holds {info.filename!r}, which "
                                          f"is not an array")
                arrays[info.filename[:-len(".npy")]] = _read_array(zf, info, disk_size)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, zlib.error,
            NotImplementedError, KeyError) as exc:  # truncated, bad headers or CRC, unknown compression
        raise CheckpointError(f"cannot read {what} {path}: {type(exc).__name__}: {exc}. The file is damaged "
                              f"or incomplete; {hint[0].lower() + hint[1:]}") from exc
    return arrays


def _read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, disk_size: int) -> np.ndarray:
    """One ``.npy`` member, allocated only once its header agrees with the bytes the member holds."""
    limit = disk_size if info.compress_type == zipfile.ZIP_STORED else MAX_EXPANSION * max(info.compress_size, 1)
    if info.file_size > limit or info.compress_size > disk_size:
        raise ValueError(f"member {info.filename} declares {info.file_size} bytes, more than the file can hold")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"member {info.filename} has .npy format {version}, not 1.0 or 2.0")
        if dtype.hasobject or dtype.kind not in ARRAY_KINDS or dtype.fields is not None:
            raise ValueError(f"member {info.filename} has dtype {dtype}; a checkpoint holds plain numbers only")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != info.file_size - f.tell():
            raise ValueError(f"member {info.filename} declares shape {shape} of {dtype} ({nbytes} bytes) but "
                             f"holds {info.file_size - f.tell()} bytes of data")
        array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        view = memoryview(array.reshape(-1, order="A").view(np.uint8)) if array.size else memoryview(b"")
        got = f.readinto(view) if array.size else 0
        while array.size and got < nbytes:
            more = f.readinto(view[got:])
            if not more:
                break
            got += more
        if got != nbytes:
            raise EOFError(f"member {info.filename} ends after {got} of {nbytes} bytes")
    return array


def _read_meta(entry: np.ndarray | None, path: Path) -> dict[str, Any]:
    if entry is None:
        raise CheckpointError(f"{path} is not an npvit checkpoint (no 'meta' entry)")
    if entry.dtype.kind != "U" or entry.shape != ():
        raise CheckpointError(f"{path} is not an npvit checkpoint: its 'meta' entry is not a JSON text")
    try:
        meta = json.loads(str(entry))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: its metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not an npvit checkpoint: its metadata is a JSON "
                              f"{type(meta).__name__}, not an object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {meta.get('format_version')!r}; this npvit reads {FORMAT_VERSION}"
        )
    return meta


# ---- what a model is rebuilt from ---------------------------------------------------------------------------
@dataclass
class ModelMeta:
    """The checked metadata a model and its preprocessing are rebuilt from."""

    config: ViTConfig
    dtype: str
    mean: np.ndarray  # (channels,) float64, finite
    variance: np.ndarray  # (channels,) float64, finite and >= 0
    class_names: list[str] | None
    run: dict[str, Any]


def _finite(value: Any, low: float, high: float = math.inf, low_open: bool = False) -> bool:
    if not is_finite_number(value):
        return False
    return (value > low if low_open else value >= low) and value <= high


def check_run_settings(run: Any, source: str | os.PathLike) -> dict[str, Any]:
    """``run`` (a checkpoint's ``meta["run"]`` or config.json's "run") if every setting in it passes the check
    the command line applies to its flag (``npvit.settings``, one table for both) and the data settings fit
    together; otherwise :class:`CheckpointError` naming ``source`` and the setting. Keys that are not settings
    are left alone, and a setting a file lacks is not required."""
    if not isinstance(run, dict):
        raise CheckpointError(f"{source}: the run settings are a JSON {type(run).__name__}, not an object")
    for setting in SETTINGS:
        if setting.name in run:
            try:
                check_value(setting, run[setting.name])
            except ValueError as exc:
                raise CheckpointError(f"{source}: the run setting {setting.name} ({setting.flag}): {_short(exc)}. "
                                      f"The file is damaged or was edited by hand.") from None
    try:
        check_data_settings(run)
    except DataError as exc:
        raise CheckpointError(f"{source}: {exc}. The file is damaged or was edited by hand.") from None
    return run


def _short(exc: ValueError) -> str:
    """The error's text, cut to 160 characters: a damaged file can hold a value of any size."""
    text = str(exc)
    return text if len(text) <= 160 else text[:157] + "..."


def check_array_dtypes(arrays: dict[str, np.ndarray], dtype: str, what: str, source: str | os.PathLike) -> None:
    """Every array of ``arrays`` has ``dtype`` (the checkpoint's, float32 or float64), or CheckpointError.

    What --resume and every loader check: an integer or bool parameter would be cast to a model of zeros, and
    a float16 or float64 one silently rounded or widened."""
    wrong = sorted(k for k, a in arrays.items() if a.dtype != np.dtype(dtype))
    if wrong:
        raise CheckpointError(f"{source}: {what} {wrong[0]} is {arrays[wrong[0]].dtype}, not {dtype} as the "
                              f"checkpoint's dtype says{f' ({len(wrong)} arrays in all)' if len(wrong) > 1 else ''}; "
                              "it was edited or not written by npvit.train. Use another checkpoint.")


def check_model_meta(ckpt: Checkpoint, source: str | os.PathLike) -> ModelMeta:
    """Validate what a model is rebuilt from (config, dtype, normalization, class names, run settings, and
    that the stored parameters are floats as many as the config describes); :class:`CheckpointError`
    naming ``source`` and the field otherwise."""
    meta = ckpt.meta

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{source}: {what}. The checkpoint is damaged, was edited by hand, or was not "
                               f"written by npvit.train.")

    model = meta.get("model")
    if not isinstance(model, dict):
        raise bad("its metadata has no model config ('model' object)")
    try:
        config = ViTConfig.from_dict(model)
    except (TypeError, ValueError) as exc:
        raise bad(f"its model config is invalid ({exc})") from None
    for name in ("dropout", "attention_dropout", "head_dropout", "ln_eps"):
        if not _finite(getattr(config, name), 0.0):
            raise bad(f"its model config has {name} = {getattr(config, name)!r}, not a finite number")

    dtype = meta.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise bad(f"its dtype is {str(dtype)[:40]!r}, not float32 or float64")

    norm = meta.get("normalization")
    if not isinstance(norm, dict):
        raise bad("its metadata has no 'normalization' object (mean and variance per channel)")
    stats = []
    for key in ("mean", "variance"):
        values = norm.get(key)
        if not isinstance(values, list) or len(values) != config.channels or \
                not all(_finite(v, -math.inf) for v in values):
            raise bad(f"its normalization {key} must be {config.channels} finite numbers (one per channel), got "
                      f"{str(values)[:60]}")
        stats.append(np.asarray(values, dtype=np.float64))
    if (stats[1] < 0).any():
        raise bad(f"its normalization variance has a negative value: {norm['variance']}")

    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != config.num_classes
                              or not all(isinstance(n, str) for n in names)):
        raise bad(f"its class_names must be {config.num_classes} strings, got {str(names)[:60]}")
    run = check_run_settings(meta.get("run", {}), source)

    check_array_dtypes(ckpt.params, dtype, "parameter", source)
    stored, expected = sum(int(v.size) for v in ckpt.params.values()), config.num_params()
    if stored != expected:
        raise bad(f"its model config describes {expected:,} parameters but it holds {stored:,}")
    return ModelMeta(config, dtype, stats[0], stats[1], names, run)
