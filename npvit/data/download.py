"""Fetch an archive over HTTP(S) with the standard library: resumable, checksummed, never half-done.

The file is written to ``<dest>.part``. A later call resumes a ``.part`` with an HTTP ``Range`` request
and starts again from zero when the server ignores it. The ``.part`` becomes ``<dest>`` only after its MD5
matches, so a file under the final name is always complete and correct: a checksum mismatch deletes the
``.part``, a transfer cut short keeps it (to resume) and raises :class:`DataError`.

Hashing a 170 MB archive takes a noticeable fraction of a second, so a verified file gets a stamp
``<dest>.md5ok`` holding its MD5, size and modification time; :func:`verify_once` trusts the stamp while
all three still match and hashes again otherwise.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write
from ..cli.progress import ProgressBar
from .errors import DataError


@dataclass(frozen=True)
class Source:
    """Where a dataset archive comes from and what it must hash to."""

    url: str
    md5: str
    filename: str  # the name it is stored under in the cache


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".md5ok")


def _stamp_text(path: Path, md5: str) -> str:
    st = path.stat()
    return f"{md5} {st.st_size} {st.st_mtime_ns}\n"


def _write_stamp(path: Path, md5: str) -> None:
    text = _stamp_text(path, md5).encode()
    try:
        atomic_write(_stamp_path(path), lambda f: f.write(text))
    except OSError:  # a read-only cache only costs a re-hash next time
        pass


def verify_once(path: str | os.PathLike, md5: str) -> None:
    """Raise :class:`DataError` unless ``path`` hashes to ``md5``; remembered in ``<path>.md5ok``."""
    path = Path(path)
    try:
        if _stamp_path(path).read_text() == _stamp_text(path, md5):
            return
    except OSError:
        pass
    digest = md5sum(path)
    if digest != md5:
        raise DataError(f"{path} does not have the published MD5 (got {digest}, expected {md5}): it is corrupt "
                        f"or not the official archive. Delete it to download it again, or pass it with "
                        f"--data-dir PATH to use it without the check.")
    _write_stamp(path, md5)


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def download(url: str, dest: str | os.PathLike, md5: str, *, progress: bool = True,
             timeout: float = 30.0, chunk_size: int = 1 << 16) -> Path:
    """Download ``url`` to ``dest`` via ``<dest>.part``, resuming a partial one; return ``dest``.

    Raises :class:`DataError` when the server cannot be reached, answers with an error, the transfer breaks
    off (the ``.part`` is kept for the next call to resume) or the MD5 does not match (the ``.part`` is
    deleted).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {dest.parent} ({exc}); set NPVIT_CACHE to a writable "
                        f"folder") from exc
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "npvit"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # asked past the end: the .part may be whole already (crash before rename)
            if md5sum(part) != md5:
                part.unlink()
                return download(url, dest, md5, progress=progress, timeout=timeout, chunk_size=chunk_size)
            return _finish(part, dest, md5)
        raise DataError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DataError(f"downloading {url} failed: {reason} (offline?)") from exc

    with response:
        resumed = offset > 0 and response.status == 206 and \
            _content_range_start(response.headers.get("Content-Range")) == offset
        if not resumed:
            offset = 0  # fresh download, or a server that ignores Range: start again from zero
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None and length.isdigit() else None
        received = offset
        bar = ProgressBar(expected, dest.name, enabled=None if progress else False, start=offset, unit="B",
                          scale=True, leave=True)
        if progress and not bar.live:  # a log, not a terminal: one line instead of a redrawn bar
            size = f" ({expected / 1e6:.1f} MB)" if expected is not None else ""
            resumed = f", resuming at {offset / 1e6:.1f} MB" if offset else ""
            print(f"downloading {dest.name}{size}{resumed}", file=sys.stderr, flush=True)
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while chunk := response.read(chunk_size):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(received)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead, disk full
            raise DataError(f"downloading {url} broke off after {received} bytes ({type(exc).__name__}: {exc}); "
                            f"the partial file {part} is kept and the next run resumes it") from exc
        finally:
            bar.close()
    if expected is not None and received != expected:
        raise DataError(f"downloading {url} broke off after {received} of {expected} bytes (connection closed "
                        f"early); the partial file {part} is kept and the next run resumes it")
    digest = md5sum(part)
    if digest != md5:
        part.unlink()
        raise DataError(f"downloaded {url} but its MD5 is {digest}, not the published {md5}: the download is "
                        f"corrupt or the file on the server changed. It was deleted; run again to retry.")
    return _finish(part, dest, md5)


def _finish(part: Path, dest: Path, md5: str) -> Path:
    os.replace(part, dest)
    _write_stamp(dest, md5)
    return dest
