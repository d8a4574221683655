"""Find CIFAR-10/100 on disk (or download it), extract it, and read it into a :class:`Dataset`.

Where the data comes from:

* ``data_dir`` given: it may be the ``.tar.gz`` itself, a folder holding it, the extracted folder
  (``.../cifar-10-batches-bin``) or a folder holding that, in the binary or the python layout (binary is
  preferred when both are there). Nothing given this way is checked against the published MD5 -- local
  copies are often rebuilt, not byte-identical -- but every file's structure is validated as it is read.
* no ``data_dir``: the cache folder. The binary archive is downloaded there (from :data:`SOURCES`) when it
  is missing, and MD5-verified once.

Archives are never read in place: :func:`~npvit.data.archive.extracted_copy` extracts each one once into
``<cache>/extracted/`` (safely, verified, atomically, and no larger than the dataset can be) and later runs
reuse that copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .archive import extracted_copy
from .dataset import Dataset
from .download import Source, verify_once
from .download import download as download_file
from .errors import DataError
from .layouts import DISPLAY_NAMES, LAYOUTS, MAX_EXTRACTED_BYTES, MAX_MEMBERS, Layout
from .readers import read_layout

#: What to download for each dataset when nothing is in the cache. Tests point these at a local server.
SOURCES: dict[str, Source] = {
    "cifar10": Source("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                      "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-binary.tar.gz"),
    "cifar100": Source("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
                       "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary.tar.gz"),
}


@dataclass(frozen=True)
class Found:
    layout: Layout
    path: Path  # an extracted folder, or an archive when is_archive
    is_archive: bool = False


def load_cifar(dataset: str, cache_dir: Path, data_dir: str | Path | None = None, label_mode: str = "fine",
               download: bool = True, progress: bool = True) -> Dataset:
    """Load ``"cifar10"`` or ``"cifar100"``; see the module docstring for where it looks."""
    if data_dir is not None:
        found = _locate_given(dataset, Path(data_dir).expanduser(), cache_dir)
    else:
        found = _locate_cached(dataset, cache_dir, download, progress)
    (x_train, y_train), (x_test, y_test), names = read_layout(found.layout, found.path, label_mode)
    return Dataset(dataset, x_train, y_train, x_test, y_test, names)


def candidates(dataset: str, folder: Path, archives: bool = True) -> list[Found]:
    """Everything in ``folder`` that could hold ``dataset``, most preferred first."""
    out = []
    for layout in LAYOUTS[dataset]:
        out += [Found(layout, folder), Found(layout, folder / layout.folder)]
        if archives:
            out.append(Found(layout, folder / layout.archive, is_archive=True))
    return out


def find(dataset: str, folder: Path, archives: bool = True) -> Found | None:
    """The preferred complete copy of ``dataset`` in ``folder``, or ``None``.

    A folder named like the official one but missing files is returned when nothing complete is found, so
    that reading it reports exactly which files are missing.
    """
    found = candidates(dataset, folder, archives)
    for c in found:
        if c.is_archive and c.path.is_file():
            return c
        if not c.is_archive and c.path.is_dir() and all((c.path / f).is_file() for f in c.layout.files):
            return c
    return next((c for c in found if not c.is_archive and c.path.name == c.layout.folder and c.path.is_dir()),
                None)


def _other_dataset_hint(dataset: str, folder: Path) -> str:
    for other in LAYOUTS:
        if other != dataset and find(other, folder) is not None:
            return f" It holds {DISPLAY_NAMES[other]} instead: is the dataset name right?"
    return ""


def _from_archive(dataset: str, archive: Path, cache_dir: Path) -> Found:
    root = extracted_copy(archive, cache_dir, MAX_EXTRACTED_BYTES[dataset], MAX_MEMBERS[dataset])
    found = find(dataset, root, archives=False)
    if found is None:
        folders = " or ".join(f"{layout.folder}/" for layout in LAYOUTS[dataset])
        raise DataError(f"the archive {archive} does not contain {DISPLAY_NAMES[dataset]}: expected {folders} "
                        f"inside (extracted to {root}).{_other_dataset_hint(dataset, root)}")
    return found


def _locate_given(dataset: str, path: Path, cache_dir: Path) -> Found:
    name = DISPLAY_NAMES[dataset]
    if not path.exists():
        raise DataError(f"the data directory {path} does not exist. Pass the {name} archive, the folder holding "
                        f"it, or its extracted folder with --data-dir PATH; or leave --data-dir out to use the "
                        f"cache ({cache_dir}), downloading into it if needed.")
    if path.is_file():
        return _from_archive(dataset, path, cache_dir)
    found = find(dataset, path)
    if found is None:
        looked = "\n".join(f"  {c.path}{'' if c.is_archive else '/'}" for c in candidates(dataset, path))
        source = SOURCES.get(dataset)
        url = f" Download it from {source.url}." if source else ""
        raise DataError(f"no {name} data found in {path}.{_other_dataset_hint(dataset, path)} Looked for:\n"
                        f"{looked}\nPass the .tar.gz archive, the folder holding it, or its extracted folder "
                        f"with --data-dir PATH.{url}")
    return _from_archive(dataset, found.path, cache_dir) if found.is_archive else found


def _locate_cached(dataset: str, cache_dir: Path, download: bool, progress: bool) -> Found:
    source = SOURCES[dataset]
    archive = cache_dir / source.filename
    if not archive.is_file():
        if not download:
            raise DataError(_missing_message(dataset, source, archive, "downloading is switched off."))
        try:
            download_file(source.url, archive, source.md5, progress=progress)
        except DataError as exc:
            raise DataError(_missing_message(dataset, source, archive, str(exc))) from exc
    verify_once(archive, source.md5)
    return _from_archive(dataset, archive, cache_dir)


def _missing_message(dataset: str, source: Source, archive: Path, reason: str) -> str:
    binary, python = LAYOUTS[dataset]
    return (
        f"{DISPLAY_NAMES[dataset]} is not on this machine and was not downloaded: {reason}\n"
        f"Looked for: {archive} (the cache folder; set NPVIT_CACHE to use another one)\n"
        f"To fix it, fetch {source.url} (MD5 {source.md5}) where there is internet access, then either\n"
        f"  - pass it with --data-dir PATH: the .tar.gz itself, the folder holding it, or its extracted folder "
        f"{binary.folder}/ ({python.archive} and {python.folder}/ work too), or\n"
        f"  - copy it to {archive}."
    )
