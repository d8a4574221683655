"""Shipping a trained run inside the package: ``python -m npvit.export RUN --pretrained NAME [--half]``.

    python -m npvit.export runs/cifar10-fast --pretrained cifar10 --half --data-dir ~/cifar-10-binary.tar.gz

writes ``npvit/zoo/cifar10/`` (weights.npz, config.json, metrics.json; ``npvit.zoo``) from the run's best.npz,
after measuring what it ships:

- the test split of the run's dataset is evaluated with the weights as stored, as ``python -m npvit.evaluate
  pretrained:NAME`` will (test-time flip and shifts as the run evaluated), and that top-1 is what metrics.json
  records;
- ``--half`` stores float16 (half the bytes; the model still computes in float32) only if the test top-1 of
  the rounded weights is within 0.05 points of the float32 weights' (:data:`MAX_TOP1_SHIFT`), else refuses;
- the three files together must fit in :data:`npvit.zoo.MAX_BYTES` (2 MiB);
- metrics.json records the logits and top-1 classes of a seeded batch of noise images, so a test can prove
  that an installed copy computes what was measured, on any machine, without the dataset.

Each file is written atomically (``npvit.files.atomic_write``), the weights first; config.json holds their
SHA-256, so a folder caught between two writes is refused on loading rather than read half old, half new.
The run's settings travel in config.json without its local paths (data, cache, run folder).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import platform
from typing import Any, Callable

import numpy as np

from ..backend import to_numpy
from ..checkpoint import Checkpoint, CheckpointError
from ..evaluate import EvalResult, evaluate, shift_misfit, view_logits
from ..files import atomic_write
from ..loading import LoadedModel, load, model_from_checkpoint, pretrained
from ..settings import load_run_dataset
from . import CONFIG, FORMAT_VERSION, MAX_BYTES, METRICS, WEIGHTS, PretrainedError, check_name, registry_root

MAX_TOP1_SHIFT = 0.0005
"""float16 storage is refused when it moves test top-1 by more than this (a fraction: 0.05 points)."""
CHECK_SEED, CHECK_IMAGES = 0, 8
"""The seeded batch of uint8 noise images whose logits metrics.json records."""
LOCAL_PATHS = ("data_dir", "cache_dir", "out", "init_from")
"""Run settings that name files on the machine that trained: shipped as null."""


def check_images(size: int, seed: int = CHECK_SEED, count: int = CHECK_IMAGES) -> np.ndarray:
    """(count, size, size, 3) uint8 noise images drawn from ``seed``: the batch metrics.json's check records."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def check_logits(loaded: LoadedModel, seed: int = CHECK_SEED, count: int = CHECK_IMAGES) -> np.ndarray:
    """(count, K) float64 logits of :func:`check_images` at the model's native size, evaluated as predict does."""
    images = check_images(loaded.native_size, seed, count)
    logits = view_logits(loaded.model, loaded.model_input, images, loaded.eval_flip, loaded.eval_shift)  # (count, K)
    return to_numpy(logits).astype(np.float64)


def ship(source: str | os.PathLike, name: str, *, half: bool = False, data_dir: str | None = None,
         cache_dir: str | None = None, root: str | os.PathLike | None = None, command: str = "",
         batch_size: int = 256, progress: bool = False, say: Callable[[str], Any] = print,
         eval_shift: int | None = None) -> dict[str, Any]:
    """Write the model of run ``source`` as shipped model ``name`` into the registry (``root``, default the
    package's: ``npvit.zoo.registry_root``); returns metrics.json's document. ``command`` is recorded as what
    produced the folder. ``eval_shift``: the test-time shifts it is measured and predicts with, recorded in its
    run settings (None: the run's own). Raises CheckpointError (or DataError for the dataset) and writes
    nothing when a check fails."""
    try:
        check_name(name)
    except PretrainedError as exc:
        raise CheckpointError(str(exc)) from None
    run_model = load(source, dtype="float32")
    if run_model.preprocess is not None or not run_model.run:
        raise CheckpointError(f"{source}: only a run trained by npvit.train ships as a pretrained model (its "
                              "dataset, normalisation and settings travel with it)")
    storage = "float16" if half else "float32"
    stored = {n: to_numpy(p).astype(storage) for n, p in run_model.model.params.items()}
    overflow = sorted(n for n, a in stored.items() if not np.isfinite(a).all())
    if overflow:
        raise CheckpointError(f"{source}: {overflow[0]} holds values beyond float16's range (65504); ship it "
                              "without --half")
    run = dict(run_model.run, **{k: None for k in LOCAL_PATHS if k in run_model.run})
    if eval_shift is not None:
        misfit = shift_misfit(eval_shift, run_model.native_size, run_model.native_size, of_model=True)
        if misfit:
            raise CheckpointError(misfit)
        run["eval_shift"] = eval_shift
    meta = {"model": run_model.config.to_dict(), "dtype": "float32", "class_names": run_model.class_names,
            "normalization": {"mean": run_model.augmenter.mean.tolist(),
                              "variance": run_model.augmenter.variance.tolist()}, "run": run}
    shipped = _loaded(stored, meta, run_model)

    data = load_run_dataset(run_model.run, data_dir, cache_dir, download=False, progress=progress)
    if data.num_classes != run_model.config.num_classes or len(data.y_test) == 0:
        raise CheckpointError(f"{source}: its dataset's test split ({len(data.y_test)} images, {data.num_classes} "
                              f"classes) cannot measure a model of {run_model.config.num_classes} classes")
    flip, eval_shift = shipped.eval_flip, shipped.eval_shift
    test = evaluate(shipped.model, shipped.augmenter, data.x_test, data.y_test, batch_size, progress, "test", flip,
                    eval_shift)
    full = None
    if half:
        full = evaluate(run_model.model, shipped.augmenter, data.x_test, data.y_test, batch_size, progress,
                        "float32", flip, eval_shift)
        shift = abs(test.top1 - full.top1)
        if shift > MAX_TOP1_SHIFT:
            raise CheckpointError(f"float16 weights move test top-1 by {100 * shift:.2f} points "
                                  f"({100 * full.top1:.2f}% -> {100 * test.top1:.2f}%), more than "
                                  f"{100 * MAX_TOP1_SHIFT:.2f}: ship it without --half")

    weights = _npz_bytes(stored)
    logits = check_logits(shipped)
    config = dict(meta, format_version=FORMAT_VERSION, name=name, storage=storage,
                  weights_sha256=hashlib.sha256(weights).hexdigest())
    metrics = {
        "name": name, "parameters": shipped.model.num_params(), "classes": shipped.class_names, "storage": storage,
        "dataset": run.get("dataset"), "test": _scores(test, len(data.y_test), flip, eval_shift),
        "float32_test": None if full is None else _scores(full, len(data.y_test), flip, eval_shift),
        "check": {"seed": CHECK_SEED, "images": CHECK_IMAGES, "size": shipped.native_size, "eval_flip": flip,
                  "eval_shift": eval_shift,
                  "predictions": logits.argmax(axis=1).tolist(), "logits": np.round(logits, 6).tolist()},
        "command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
    }
    texts = {CONFIG: json.dumps(config, indent=1, allow_nan=False).encode(),
             METRICS: json.dumps(metrics, indent=1, allow_nan=False).encode()}
    size = len(weights) + sum(len(t) for t in texts.values())
    if size > MAX_BYTES:
        raise CheckpointError(f"{name} would take {size / 2**20:.2f} MiB, more than the {MAX_BYTES / 2**20:g} MiB a "
                              "shipped model may" + ("" if half else "; --half stores half the bytes"))

    folder = registry_root(root) / name
    atomic_write(folder / WEIGHTS, lambda f: f.write(weights))
    for file, text in texts.items():
        atomic_write(folder / file, lambda f, text=text: f.write(text))
    again = check_logits(pretrained(name, root=folder.parent))
    if not np.array_equal(again, logits):  # the files must give the very model measured
        raise CheckpointError(f"{folder} does not read back as the model measured (check logits differ)")
    say(f"wrote {folder} ({shipped.model.num_params():,} parameters, {storage}, {size / 2**20:.2f} MiB): "
        f"test top-1 {100 * test.top1:.2f}%, top-5 {100 * test.top5:.2f}%"
        + ("" if full is None else f" (float32: top-1 {100 * full.top1:.2f}%)"))
    return metrics


def _loaded(stored: dict[str, np.ndarray], meta: dict[str, Any], run_model: LoadedModel) -> LoadedModel:
    """The model as ``npvit.pretrained`` will rebuild it from the stored arrays (widened to float32)."""
    params = {n: a.astype(np.float32) for n, a in stored.items()}
    model, augmenter = model_from_checkpoint(Checkpoint(params, {}, meta), source=str(run_model.path))
    return LoadedModel(run_model.path, model, augmenter, meta)


def _scores(result: EvalResult, images: int, flip: bool, shift: int) -> dict[str, Any]:
    return dict(result.as_dict(), images=images, eval_flip=flip, eval_shift=shift)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` of ``param/<name>`` members (float weights hardly compress)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"param/{n}": a for n, a in arrays.items()})
    return buffer.getvalue()

