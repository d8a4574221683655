"""Extract a .tar.gz safely and atomically, and keep one extracted copy of each archive in the cache.

Safety: a tar member names its own destination, so a hostile or broken archive can write anywhere the
process may write (``/etc/...``, ``../../.bashrc``), or plant a link that a later member writes through.
Only regular files and folders are extracted, each under a name that is relative and free of ``..``; links
of every kind, devices and FIFOs are refused (the CIFAR archives contain none, and refusing them outright
closes the symlink-chain tricks that checks on names alone miss). Contents are copied by hand, so no
owner, permission bits or timestamps come from the archive.

Atomicity: everything is written into a fresh hidden temporary folder next to the destination and renamed
into place only once the last member is written (rename is atomic within a filesystem). A crash or a bad
member therefore never leaves a half-extracted folder under the final name; at worst a hidden
``.<name>.*.tmp`` folder is left, which nothing reads and the next extraction of the same archive deletes
once it is an hour old (old enough that no live process can still be writing it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from pathlib import Path, PurePosixPath

from .errors import DataError

#: Refuse archives that would expand past this (CIFAR-100 is about 180 MB extracted).
MAX_EXTRACTED_BYTES = 4 << 30

#: File written inside each cached extraction, naming the archive (path, size, mtime) it came from.
SOURCE_MARKER = ".npvit-source.json"

#: Temporary folders of crashed extractions older than this are deleted.
STALE_SECONDS = 3600


def _member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """The member's path relative to the extraction root, or :class:`DataError` if it is not allowed."""
    kind = ("regular file" if member.isfile() else "folder" if member.isdir() else
            "symlink" if member.issym() else "hard link" if member.islnk() else "special file")
    if kind not in ("regular file", "folder"):
        target = f" -> {member.linkname}" if member.issym() or member.islnk() else ""
        raise DataError(f"refused to extract {archive}: member {member.name!r}{target} is a {kind}; only "
                        f"regular files and folders are extracted. The archive is not a genuine CIFAR archive.")
    name = member.name
    path = PurePosixPath(name)
    bad = (not name or "\x00" in name or "\\" in name or path.is_absolute() or ".." in path.parts
           or (len(name) > 1 and name[1] == ":"))  # C:foo, a Windows drive
    if bad:
        raise DataError(f"refused to extract {archive}: member {name!r} would land outside the target folder "
                        f"(absolute path, '..' or drive). The archive is not a genuine CIFAR archive.")
    return PurePosixPath(*[p for p in path.parts if p not in ("", ".")])


def _extract_members(archive: Path, root: Path) -> None:
    """Stream every member of ``archive`` into the existing empty folder ``root``."""
    real_root = os.path.realpath(root)
    total = 0
    with tarfile.open(archive, mode="r|*") as tar:  # streaming: one pass over the gzip stream
        for member in tar:
            rel = _member_path(member, archive)
            target = root.joinpath(*rel.parts)
            # Belt and braces: nothing in root is a link, so this holds whenever the name check passed.
            if os.path.commonpath([real_root, os.path.realpath(target)]) != real_root:
                raise DataError(f"refused to extract {archive}: member {member.name!r} escapes the target folder")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            total += member.size
            if total > MAX_EXTRACTED_BYTES:
                raise DataError(f"refused to extract {archive}: it expands to more than "
                                f"{MAX_EXTRACTED_BYTES >> 30} GiB, far more than any CIFAR archive")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None  # a regular file always has contents
            with src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def extract_atomically(archive: str | os.PathLike, dest: str | os.PathLike, marker: str | None = None) -> Path:
    """Extract ``archive`` so that folder ``dest`` holds its members, all at once or not at all.

    ``marker``, if given, is written to ``dest/SOURCE_MARKER`` in the same atomic step. An existing
    ``dest`` is replaced. Returns ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    _remove_stale_temporaries(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    except OSError as exc:
        raise DataError(f"cannot create a folder in {dest.parent} to extract {archive} ({exc}). Set NPVIT_CACHE "
                        f"to a writable folder, or pass the extracted folder instead of the archive.") from exc
    try:
        try:
            _extract_members(archive, tmp)
            if marker is not None:
                (tmp / SOURCE_MARKER).write_text(marker)
            _move_into_place(tmp, dest)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise DataError(f"cannot extract {archive} into {dest.parent} ({type(exc).__name__}: {exc}). If the "
                            f"archive is corrupt or truncated, replace it; if the folder is not writable or the "
                            f"disk is full, set NPVIT_CACHE to another folder.") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
    return dest


def _remove_stale_temporaries(dest: Path) -> None:
    """Delete ``.<dest name>.*.tmp`` / ``.old`` folders that a crashed run left beside ``dest``."""
    cutoff = time.time() - STALE_SECONDS
    for leftover in [*dest.parent.glob(f".{dest.name}.*.tmp"), *dest.parent.glob(f".{dest.name}.*.old")]:
        try:
            if leftover.is_dir() and leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _move_into_place(tmp: Path, dest: Path) -> None:
    old = None
    if dest.exists():  # stale copy: move it aside first, so dest is at every moment absent or complete
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.replace(dest, old / "x")
    try:
        os.rename(tmp, dest)
    except OSError:
        if not dest.is_dir():  # not a lost race with another process extracting the same archive
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def extracted_copy(archive: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """The folder in ``cache_dir`` that holds ``archive``'s members, extracting it the first time.

    Each archive gets ``cache_dir/extracted/<name>-<hash of its absolute path>``, re-extracted whenever the
    archive's size or modification time changes; so a run reads an archive once, not on every start.
    """
    archive = Path(archive).resolve()
    st = archive.stat()
    identity = json.dumps({"archive": str(archive), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    stem = archive.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")
    key = hashlib.sha256(str(archive).encode()).hexdigest()[:12]
    dest = Path(cache_dir) / "extracted" / f"{stem}-{key}"
    try:
        if (dest / SOURCE_MARKER).read_text() == identity:
            return dest
    except OSError:
        pass
    return extract_atomically(archive, dest, marker=identity)
