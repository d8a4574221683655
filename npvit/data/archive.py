"""Extract a .tar.gz safely, completely verified and atomically, and keep one extracted copy of each archive
in the cache.

Integrity: tarfile's streaming reader checks neither the gzip trailer nor the end of the tar data: a bit
flipped in the compressed data passes, and a damaged header part-way silently ends the archive early.
:class:`_TarBytes` therefore inflates the gzip stream itself (zlib checks the CRC-32 and length in each
member's trailer) and notes where non-zero data lies, and after the last member the rest of the file is read
and checked: the gzip stream must end properly, and nothing but zero blocks may follow the point where tar
stopped reading (a damaged header leaves the rest of the archive there). A plain ``.tar`` is read as it is
(tar has no checksum of the contents, only of each header).

Bounds: each dataset can only be so large (:data:`~npvit.data.layouts.MAX_EXTRACTED_BYTES`), so extraction
stops as soon as the archive expands past that or holds more members than it could, before the disk fills.

Safety: a tar member names its own destination, so a hostile or broken archive can write anywhere the
process may write (``/etc/...``, ``../../.bashrc``), or plant a link that a later member writes through.
Only regular files and folders are extracted, each under a name that is relative and free of ``..``; links
of every kind, devices and FIFOs are refused (the CIFAR archives contain none, and refusing them outright
closes the symlink-chain tricks that checks on names alone miss). Where Python has tarfile's extraction
filters (3.12, and 3.8.17+ / 3.9.17+ / 3.10.12+ / 3.11.4+), each member is also passed through
``tarfile.data_filter``, the library's own check that it lands inside the target; elsewhere a ``realpath``
check does that job. Contents are copied by hand, so no owner, permission bits or timestamps come from the
archive.

Atomicity: everything is written into a fresh hidden temporary folder next to the destination and renamed
into place only once the last member is written and the archive has passed every check (rename is atomic
within a filesystem). A crash, a bad member or a corrupt archive therefore never leaves a half-extracted
folder under the final name: a refused extraction is deleted at once, and at worst a crash leaves a hidden
``.<name>.*.tmp`` folder, which nothing reads and the next extraction of the same archive deletes once it is
an hour old (old enough that no live process can still be writing it).
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
from typing import BinaryIO, Callable

from .errors import DataError

#: Default bounds when the caller names none (any CIFAR archive, both layouts, fits well inside).
MAX_EXTRACTED_BYTES = 400 * 10**6
MAX_MEMBERS = 100

#: File written inside each cached extraction, naming the archive (path, size, mtime) it came from. The
#: "checks" entry changes whenever extraction starts verifying more, so older copies are verified again.
SOURCE_MARKER = ".npvit-source.json"
CHECKS = "gzip-crc,tar-end,v2"

#: Temporary folders of crashed extractions older than this are deleted.
STALE_SECONDS = 3600

_CHUNK = 1 << 20
_GZIP = 16 + zlib.MAX_WBITS  # zlib's gzip mode: header parsed, CRC-32 and length of the trailer checked
_HAS_FILTERS = hasattr(tarfile, "data_filter")


def _corrupt(archive: Path, what: str) -> DataError:
    return DataError(f"the archive {archive} is corrupt: {what}. Nothing from it was kept; replace it with a "
                     f"fresh copy (download it again, or copy it again from its source).")


class _TarBytes:
    """The tar stream inside an archive file, for ``tarfile.open(fileobj=..., mode="r|")``: inflated from
    gzip (every member's trailer checked) or read as it is (a plain tar), and at most ``limit`` bytes.

    ``last_nonzero`` is the offset of the last non-zero byte handed out, so that :meth:`finish` can tell the
    zero blocks that end a tar archive from data that tar stopped reading.
    """

    def __init__(self, f: BinaryIO, archive: Path, limit: int) -> None:
        self._f, self._archive, self._limit = f, archive, limit
        self._gzip = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        self._inflate = zlib.decompressobj(_GZIP) if self._gzip else None
        self._input = b""  # compressed bytes not yet inflated
        self._piece, self._at = b"", 0  # tar bytes inflated but not yet handed out, and how far they were read
        self.position = 0  # tar bytes handed out
        self.last_nonzero = -1

    def read(self, n: int = -1) -> bytes:
        parts = []
        while n != 0:  # n < 0: everything that is left
            if self._at == len(self._piece):
                self._piece, self._at = self._next_piece(), 0
                if not self._piece:
                    break
            take = self._piece[self._at:] if n < 0 else self._piece[self._at:self._at + n]
            self._at += len(take)
            if n > 0:
                n -= len(take)
            parts.append(take)
        out = b"".join(parts)
        kept = len(out.rstrip(b"\0"))
        if kept:
            self.last_nonzero = self.position + kept - 1
        self.position += len(out)
        return out

    def _read_file(self) -> bytes:
        try:
            return self._f.read(_CHUNK)
        except OSError as exc:
            raise DataError(f"cannot read the archive {self._archive}: {exc}") from exc

    def _next_piece(self) -> bytes:
        """The next tar bytes (b"" at the end of the file, once the gzip stream is known to be complete)."""
        while True:
            if self._inflate is None:
                piece = self._read_file()
            else:
                piece = self._inflate_some()
                if piece is None:
                    continue
            if self.position + (len(self._piece) - self._at) + len(piece) > self._limit:
                raise DataError(f"refused to extract {self._archive}: it expands to more than "
                                f"{self._limit / 1e6:.0f} MB, more than the dataset can be. Nothing from it "
                                f"was kept. It is not the dataset's archive; pass the right one.")
            return piece

    def _inflate_some(self) -> bytes | None:
        """Inflated bytes, b"" at the end of the file, or None when more input was needed first."""
        d = self._inflate
        if not self._input:
            self._input = self._read_file()
            if not self._input:
                if not d.eof:
                    raise _corrupt(self._archive, "it ends in the middle of the gzip data (the file is truncated)")
                return b""
        if d.eof:  # one gzip member ended: another may follow (gzip allows several), or zero padding
            if not self._input.strip(b"\0"):
                self._input = b""
                return None
            d = self._inflate = zlib.decompressobj(_GZIP)
        try:
            out = d.decompress(self._input, _CHUNK)  # at most _CHUNK out: a small input may inflate hugely
        except zlib.error as exc:
            what = ("the gzip checksum (CRC-32) does not match its contents" if "data check" in str(exc) else
                    "the gzip length check failed" if "length check" in str(exc) else f"bad gzip data ({exc})")
            raise _corrupt(self._archive, what) from None
        self._input = d.unused_data if d.eof else d.unconsumed_tail
        return out or None

    def finish(self, tar_end: int) -> None:
        """Read the rest of the file (checking the gzip stream to its end) and make sure that from
        ``tar_end``, where tarfile stopped, on there is nothing but the zero blocks that end an archive."""
        while self.read(_CHUNK):
            pass
        if self.last_nonzero >= tar_end:
            raise _corrupt(self._archive, f"the tar data is damaged at byte {tar_end} of {self.position} (a broken "
                                          f"header there ends the readable part early)")
        if self.position - tar_end < 512:
            raise _corrupt(self._archive, "the tar data ends without its end-of-archive marker (it is truncated)")


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


def _check_inside(member: tarfile.TarInfo, target: Path, root: Path, archive: Path) -> None:
    """The library's check where Python has it (tarfile.data_filter), else ours: ``target`` is in ``root``."""
    if _HAS_FILTERS:
        try:
            tarfile.data_filter(member, str(root))
        except tarfile.FilterError as exc:
            raise DataError(f"refused to extract {archive}: {exc}. The archive is not a genuine CIFAR "
                            f"archive.") from None
        return
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(target)]) != real_root:
        raise DataError(f"refused to extract {archive}: member {member.name!r} escapes the target folder")


def _extract_members(archive: Path, root: Path, max_bytes: int, max_members: int) -> None:
    """Stream every member of ``archive`` into the existing empty folder ``root``, verifying the archive."""
    total = members = 0
    limit = max_bytes + (max_members + 2) * 1536 + (1 << 20)  # the contents, tar headers and padding
    try:
        f = open(archive, "rb")
    except OSError as exc:
        raise DataError(f"cannot read the archive {archive}: {exc}") from exc
    with f:
        stream = _TarBytes(f, archive, limit)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # one pass, in order
                for member in tar:
                    rel = _member_path(member, archive)
                    target = root.joinpath(*rel.parts)
                    _check_inside(member, target, root, archive)
                    members += 1
                    if members > max_members:
                        raise DataError(f"refused to extract {archive}: it holds more than {max_members} files "
                                        f"and folders, more than the dataset has. Nothing from it was kept.")
                    if member.isdir():
                        _write(archive, lambda: target.mkdir(parents=True, exist_ok=True))
                        continue
                    total += member.size
                    if total > max_bytes:
                        raise DataError(f"refused to extract {archive}: it expands to more than "
                                        f"{max_bytes / 1e6:.0f} MB, more than the dataset can be. Nothing from "
                                        f"it was kept. It is not the dataset's archive; pass the right one.")
                    src = tar.extractfile(member)
                    assert src is not None  # a regular file always has contents
                    _write(archive, lambda: _copy(src, target))
                tar_end = tar.offset
        except (tarfile.TarError, EOFError) as exc:  # a bad first header, data cut short inside a member
            raise _corrupt(archive, f"{type(exc).__name__}: {exc}") from None
        stream.finish(tar_end)


def _copy(src: BinaryIO, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)


def _write(archive: Path, action: Callable[[], object]) -> None:
    """Run a write into the cache; a failure there is the cache folder's fault, not the archive's."""
    try:
        action()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"cannot extract {archive} into the cache ({type(exc).__name__}: {exc}). If the folder "
                        f"is not writable or the disk is full, set NPVIT_CACHE to another folder.") from exc


def extract_atomically(archive: str | os.PathLike, dest: str | os.PathLike, marker: str | None = None,
                       max_bytes: int = MAX_EXTRACTED_BYTES, max_members: int = MAX_MEMBERS) -> Path:
    """Extract ``archive`` so that folder ``dest`` holds its members, all at once or not at all.

    ``marker``, if given, is written to ``dest/SOURCE_MARKER`` in the same atomic step. An existing
    ``dest`` is replaced. Extraction stops with :class:`DataError` as soon as the archive expands past
    ``max_bytes`` or ``max_members``, or turns out corrupt; nothing of it is left then. Returns ``dest``.
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
        _extract_members(archive, tmp, max_bytes, max_members)
        _write(archive, lambda: marker is None or (tmp / SOURCE_MARKER).write_text(marker))
        _write(archive, lambda: _move_into_place(tmp, dest))
    except DataError:
        if dest.is_dir() and _marker(dest) != marker:  # a copy of an earlier version of this archive: stale
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
    return dest


def _marker(dest: Path) -> str | None:
    try:
        return (dest / SOURCE_MARKER).read_text()
    except (OSError, UnicodeDecodeError):
        return None


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


def extracted_copy(archive: str | os.PathLike, cache_dir: str | os.PathLike, max_bytes: int = MAX_EXTRACTED_BYTES,
                   max_members: int = MAX_MEMBERS) -> Path:
    """The folder in ``cache_dir`` that holds ``archive``'s members, extracting it the first time.

    Each archive gets ``cache_dir/extracted/<name>-<hash of its absolute path>``, re-extracted whenever the
    archive's size or modification time changes; so a run reads an archive once, not on every start.
    ``max_bytes`` and ``max_members`` bound the extraction (see :func:`extract_atomically`).
    """
    archive = Path(archive).resolve()
    try:
        st = archive.stat()
    except OSError as exc:
        raise DataError(f"cannot read the archive {archive}: {exc}") from exc
    identity = json.dumps({"archive": str(archive), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                           "checks": CHECKS})
    stem = archive.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")
    key = hashlib.sha256(str(archive).encode()).hexdigest()[:12]
    dest = Path(cache_dir) / "extracted" / f"{stem}-{key}"
    if _marker(dest) == identity:
        return dest
    return extract_atomically(archive, dest, marker=identity, max_bytes=max_bytes, max_members=max_members)
