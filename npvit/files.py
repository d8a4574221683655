"""Writing files so that nothing a user saved is ever lost or half-written, and JSON that stays JSON.

``atomic_write(path, write)`` writes to a temporary file beside ``path``, flushes it to disk and renames it
over ``path``: a reader sees the old file or the new one, never a mixture. A process killed during the
write (SIGKILL, power loss) cannot clean up, so it may leave its temporary file behind; the names are
recognisable (``.<name>.<random>.npvit-tmp``) so that :func:`remove_stale_temp_files` deletes exactly those,
and nothing else, when the folder is next opened by its owner.

``dumps_finite(doc)`` is ``json.dumps`` for documents that may hold NaN or infinity, which JSON cannot
express: they become ``null``, and the caller learns which entries were replaced so it can say so.
``is_int`` and ``is_finite_number`` check the numbers of a JSON document read back from a file.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

#: Suffix of every temporary file atomic_write creates (and the only files remove_stale_temp_files removes).
TEMP_SUFFIX = ".npvit-tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``.

    The rename is atomic on POSIX and Windows filesystems, so readers see the old file or the new one, never
    a mixture; if ``write`` fails (or the process is interrupted) the temporary file is removed and ``path``
    is untouched. The folder is synced after the rename where the OS allows, so the new name survives a
    power loss too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
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
    _sync_folder(path.parent)


#: Earlier npvit versions named them ``.<name>.<8 random characters>.tmp`` (tempfile's alphabet).
_LEGACY_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def is_temp_file(path: str | os.PathLike) -> bool:
    """True for the names atomic_write gives its temporary files: ``.<name>.<random>.npvit-tmp`` (and the
    ``.<name>.<random>.tmp`` of earlier versions)."""
    name = Path(path).name
    if name.startswith(".") and name.endswith(TEMP_SUFFIX) and len(name) > len(TEMP_SUFFIX) + 2:
        return True
    return _LEGACY_TEMP.fullmatch(name) is not None


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that atomic_write left in ``folder`` (not its subfolders) when a process
    was killed mid-write; return what was removed.

    Call it only while holding the folder for writing (the training program, on opening its run folder):
    a live writer's temporary file is indistinguishable from a dead one's. Only names atomic_write makes
    are touched: hidden, and ending in ``.npvit-tmp`` (or a random part of tempfile's 8 characters and
    ``.tmp``, as earlier versions wrote them); folders and links are left alone.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if is_temp_file(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:  # gone meanwhile
                continue
            removed.append(Path(entry.path))
    return removed


def dumps_finite(doc: Any, **kwargs: Any) -> tuple[str, list[str]]:
    """``json.dumps(doc)`` with every NaN or infinite float written as ``null``.

    Returns (the JSON text, the paths of the replaced entries such as ``"loss"`` or ``"[0].predictions"``),
    so that the caller can say which numbers were not finite. The text is strict JSON (``allow_nan=False``).
    """
    replaced: list[str] = []

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            replaced.append(where or "(top level)")
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    text = json.dumps(clean(doc, ""), allow_nan=False, **kwargs)
    return text, replaced


def is_int(value: Any) -> bool:
    """True for a JSON integer (a Python int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """True for a JSON number (int or float, not a bool) that is a finite float: NaN, infinity and integers
    too large for a float (``1e400`` written out in digits) are not, so the caller can use ``float(value)``."""
    if not (is_int(value) or isinstance(value, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """fsync a folder so that a rename in it is on disk (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows, or no permission to read the folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
