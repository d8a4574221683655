"""Tiny CIFAR copies for the data-layer tests: the official file names and formats, a few records each.

``write_cifar`` writes an extracted folder in either layout and returns what a loader must read back;
``write_archive`` packs it as the official ``.tar.gz``; ``py2_pickle`` writes a pickle the way Python 2's
cPickle wrote the official python-layout files (``numpy.core`` names, ``str`` opcodes), which Python 3
cannot produce by itself.
"""

from __future__ import annotations

import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npvit.data.layouts import LAYOUTS, Layout

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FINE_NAMES = [f"fine_{i:02d}" for i in range(100)]
COARSE_NAMES = [f"coarse_{i:02d}" for i in range(20)]


@dataclass
class Expected:
    layout: Layout
    folder: Path
    x_train: np.ndarray  # (N, 32, 32, 3) uint8
    x_test: np.ndarray
    fine_train: np.ndarray  # int64; CIFAR-10's only labels
    fine_test: np.ndarray
    coarse_train: np.ndarray | None
    coarse_test: np.ndarray | None

    def labels(self, split: str, label_mode: str = "fine") -> np.ndarray:
        return getattr(self, f"{label_mode}_{split}")

    def class_names(self, label_mode: str = "fine") -> list[str]:
        if self.layout.dataset == "cifar10":
            return CIFAR10_NAMES
        return FINE_NAMES if label_mode == "fine" else COARSE_NAMES


def layout_of(dataset: str, kind: str) -> Layout:
    return next(layout for layout in LAYOUTS[dataset] if layout.kind == kind)


def chw_rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_cifar(root: Path, dataset: str, kind: str, per_file: int = 3, n_test: int = 4, seed: int = 0,
                py2: bool = False) -> Expected:
    """Write ``root/<official folder>`` with ``per_file`` images in each training file."""
    layout = layout_of(dataset, kind)
    rng = np.random.default_rng(seed)
    folder = Path(root) / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    n_train = per_file * len(layout.train)
    x = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
    n_fine = 10 if dataset == "cifar10" else 100
    fine = rng.integers(0, n_fine, n_train + n_test).astype(np.int64)
    coarse = rng.integers(0, 20, n_train + n_test).astype(np.int64) if dataset == "cifar100" else None
    dump = py2_pickle if py2 else _py3_pickle

    def write_split(names: tuple[str, ...], sl: slice) -> None:
        xs, fs = x[sl], fine[sl]
        cs = coarse[sl] if coarse is not None else None
        per = len(xs) // len(names)
        for i, name in enumerate(names):
            part = slice(i * per, (i + 1) * per)
            if kind == "binary":
                cols = [fs[part][:, None]] if cs is None else [cs[part][:, None], fs[part][:, None]]
                np.concatenate(cols + [chw_rows(xs[part])], axis=1).astype(np.uint8).tofile(folder / name)
            else:
                batch = {b"batch_label": b"batch", b"data": chw_rows(xs[part]),
                         b"filenames": [b"f%d.png" % j for j in range(per)]}
                if cs is None:
                    batch[b"labels"] = [int(v) for v in fs[part]]
                else:
                    batch[b"fine_labels"] = [int(v) for v in fs[part]]
                    batch[b"coarse_labels"] = [int(v) for v in cs[part]]
                (folder / name).write_bytes(dump(batch))

    write_split(layout.train, slice(0, n_train))
    write_split(layout.test, slice(n_train, None))
    if kind == "binary" and dataset == "cifar10":
        (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    elif kind == "binary":
        (folder / "fine_label_names.txt").write_text("\n".join(FINE_NAMES) + "\n")
        (folder / "coarse_label_names.txt").write_text("\n".join(COARSE_NAMES) + "\n")
    elif dataset == "cifar10":
        meta = {b"num_cases_per_batch": per_file, b"label_names": [n.encode() for n in CIFAR10_NAMES],
                b"num_vis": 3072}
        (folder / "batches.meta").write_bytes(dump(meta))
    else:
        meta = {b"fine_label_names": [n.encode() for n in FINE_NAMES],
                b"coarse_label_names": [n.encode() for n in COARSE_NAMES]}
        (folder / "meta").write_bytes(dump(meta))
    return Expected(layout, folder, x[:n_train], x[n_train:], fine[:n_train], fine[n_train:],
                    None if coarse is None else coarse[:n_train], None if coarse is None else coarse[n_train:])


def write_archive(folder: Path, archive: Path) -> Path:
    """Pack ``folder`` as ``archive`` (.tar.gz) with the folder as the top-level entry, as the authors do."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def _py3_pickle(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=3)  # what ../shared/data/build_cifar10.py writes


def py2_pickle(obj: object) -> bytes:
    """Protocol-2 pickle as Python 2 wrote it: bytes as ``str`` opcodes, arrays via ``numpy.core``."""
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b)

    def glob(module: str, name: str) -> None:
        out.extend(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def integer(v: int) -> None:
        out.extend(b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v))

    def value(v: object) -> None:
        if isinstance(v, bytes):
            string(v)
        elif isinstance(v, bool) or v is None:
            raise TypeError(v)
        elif isinstance(v, int):
            integer(v)
        elif isinstance(v, list):
            out.extend(b"](")
            for item in v:
                value(item)
            out.extend(b"e")
        elif isinstance(v, dict):
            out.extend(b"}(")
            for k, item in v.items():
                value(k)
                value(item)
            out.extend(b"u")
        elif isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 2:
            glob("numpy.core.multiarray", "_reconstruct")
            glob("numpy", "ndarray")
            out.extend(b"K\x00\x85")  # (0,)
            string(b"b")
            out.extend(b"\x87R(")  # _reconstruct(ndarray, (0,), 'b'); then the state tuple
            integer(1)
            integer(v.shape[0])
            integer(v.shape[1])
            out.extend(b"\x86")
            glob("numpy", "dtype")
            string(b"u1")
            out.extend(b"K\x00K\x01\x87R(K\x03")  # dtype('u1', 0, 1); state (3, '|', None x3, -1, -1, 0)
            string(b"|")
            out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")  # ... build dtype; is_fortran False
            string(np.ascontiguousarray(v).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(v))

    value(obj)
    out.extend(b".")
    return bytes(out)
