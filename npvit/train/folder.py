"""The run folder: one training run's files, held by that run alone while it lives.

    config.json     the resolved settings and the model config
    metrics.jsonl   one JSON row per epoch
    metrics.csv     the same rows as Keras' CSVLogger writes them, for spreadsheets and pandas
    tensorboard/    TensorBoard event files of the same numbers and the learning rate of every step
                    (with --tensorboard)
    last.npz        the latest checkpoint; best.npz, the best validation top-1
    summary.json    the test results, written at the end
    .lock           locked (flock) by the run using the folder; holds its process id and host

Opening a folder takes an exclusive lock on ``.lock`` for the life of the process, so a second run on the
same folder (a new run or ``--resume``) fails at once instead of interleaving its rows and checkpoints with
the first. The operating system drops the lock when the process ends, however it ends, so the lock of a run
killed with SIGKILL is simply taken over. (flock is advisory and local: it does not protect a folder shared
over NFS between machines.) Once locked, leftover temporary files of writes a killed run never finished
(``.last.npz.<random>.npvit-tmp``, hundreds of MB for the Keras preset) are removed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_write, is_int, remove_stale_temp_files
from ..settings import UsageError

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class FolderInUse(UsageError):
    """Another live process holds the run folder."""


class RunFolder:
    """A run folder, locked by this process from ``open`` until ``close`` (or the process's end)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.last = self.path / "last.npz"
        self.best = self.path / "best.npz"
        self.summary = self.path / "summary.json"
        self.csv = self.path / "metrics.csv"
        self.tensorboard = self.path / "tensorboard"
        self._lock_file: Any = None
        self.created = False  # whether open() made the folder

    def open(self) -> list[str]:
        """Create the folder if needed, lock it, and remove stale temporary files. Returns their names.

        Raises FolderInUse when another process holds the lock.
        """
        self.created = not self.path.exists()
        if os.path.lexists(self.path) and not self.path.is_dir():
            raise UsageError(f"--out {self.path} is a file, not a folder: name a new or existing run folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UsageError(f"--out {self.path}: a part of the path is a file, not a folder; choose another "
                             "--out") from None
        try:
            self._lock()
        except BaseException:  # a full disk, say: a folder made here for nothing is taken back
            if self.created:
                (self.path / LOCK_NAME).unlink(missing_ok=True)
                try:
                    self.path.rmdir()
                except OSError:
                    pass
            raise
        return sorted(p.name for p in remove_stale_temp_files(self.path))

    def _lock(self) -> None:
        if fcntl is None:
            return
        while True:
            f = open(self.path / LOCK_NAME, "a+")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise FolderInUse(f"{self.path} is in use by another training run ({holder}); wait for it to "
                                  "end, or choose another --out") from None
            except OSError:  # a filesystem without locks: run unlocked rather than not at all
                f.close()
                print(f"warning: cannot lock {self.path} (the filesystem has no locks); make sure no other run "
                      "uses it", file=sys.stderr)
                return
            # A run that gave up a folder it had just made (discard) may have removed the file opened here:
            # a lock on it would guard nothing, so lock the file now at that name instead.
            try:
                if os.stat(self.path / LOCK_NAME).st_ino == os.fstat(f.fileno()).st_ino:
                    break
            except FileNotFoundError:
                self.path.mkdir(parents=True, exist_ok=True)
            f.close()
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._lock_file = f

    def close(self) -> None:
        """Release the lock (the lock file stays: removing it would race with a process about to lock it)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def discard(self) -> None:
        """Undo open() for a run refused before it wrote anything: remove the folder if open() made it and it
        holds nothing but the lock file, so that a refused run leaves no trace."""
        if not self.created or self._lock_file is None:
            return
        if [p.name for p in self.path.iterdir()] == [LOCK_NAME]:
            (self.path / LOCK_NAME).unlink()  # before unlocking: see _lock for those who opened it meanwhile
            self.close()
            try:
                self.path.rmdir()
            except OSError:  # someone else's files arrived meanwhile
                pass

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def contents(self) -> "FolderContents":
        """What the folder holds (see FolderContents): the one check new runs and resumes decide by."""
        rows = 0
        if self.metrics.is_file():
            try:
                rows = sum(1 for line in self.metrics.read_bytes().splitlines() if line.strip())
            except OSError:
                rows = 0
        return FolderContents(config=self.config.exists(), last=os.path.lexists(self.last),
                              last_usable=_is_regular_file(self.last), best=os.path.lexists(self.best),
                              metrics_rows=rows, summary=os.path.lexists(self.summary))

    def earlier_run_files(self) -> list[str]:
        """Names of files an earlier run left here (the lock file aside)."""
        return [p.name for p in (self.config, self.metrics, self.csv, self.last, self.best, self.summary,
                                         self.tensorboard) if p.exists()]


@dataclass(frozen=True)
class FolderContents:
    """What a run folder holds: nothing, a config only (a run stopped before its first checkpoint),
    checkpoints, metrics rows, a summary; and whether last.npz is a regular file that can be read (not
    missing, a dangling or looping link, a folder or a FIFO)."""

    config: bool
    last: bool
    last_usable: bool
    best: bool
    metrics_rows: int
    summary: bool

    @property
    def trained(self) -> bool:
        """Whether a checkpoint or a summary shows that training happened here. (Metrics rows alone, of a run
        that never saved a checkpoint, are logged again when it starts over.)"""
        return self.last or self.best or self.summary

    def describe(self) -> str:
        """The evidence of training, e.g. ``best.npz, 6 metrics rows, summary.json``."""
        parts = [name for name, there in (("last.npz", self.last), ("best.npz", self.best)) if there]
        if self.metrics_rows:
            parts.append(f"{self.metrics_rows} metrics row{'s' if self.metrics_rows != 1 else ''}")
        if self.summary:
            parts.append("summary.json")
        return ", ".join(parts) or "nothing"


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)  # follows links: a dangling or looping one is not usable
    except (OSError, ValueError):
        return False


class MetricsLog:
    """The rows of metrics.jsonl, held in memory and written whole (atomically) at each append.

    The file is read once, when a run is resumed; a live run never reads it again, so nothing done to the
    file meanwhile can stop a run at the end of an epoch. Lines that are not rows npvit wrote (damaged, or
    edited by hand) are dropped with a warning, and the file as it was is set aside as
    ``metrics.jsonl.corrupt`` (``.corrupt-2``, ... if that exists) so that nothing is lost.
    """

    def __init__(self, path: Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.rows = rows or []

    @classmethod
    def resume(cls, path: Path, up_to_step: int) -> "MetricsLog":
        """The rows logged up to the checkpoint at ``up_to_step`` (later ones come from a run that stopped
        before its next checkpoint, and will be logged again)."""
        log = cls(path)
        if not path.exists():
            return log
        bad: list[int] = []
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            row = _parse_row(line)
            if row is None:
                bad.append(number)
            else:
                log.rows.append(row)
        if bad:
            aside = _free_name(path.with_name(path.name + ".corrupt"))
            os.replace(path, aside)
            lines = ", ".join(str(n) for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
            print(f"warning: {path} line {lines} is not a metrics row; the file was moved to {aside.name} and "
                  f"its {len(log.rows)} readable rows kept", file=sys.stderr)
        kept = [r for r in log.rows if r["step"] <= up_to_step]
        if bad or len(kept) != len(log.rows):
            log.rows = kept
            log._write()
        return log

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.rows)
        atomic_write(self.path, lambda f: f.write(text.encode()))
        atomic_write(self.path.with_suffix(".csv"), lambda f: f.write(csv_text(self.rows).encode()))


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The rows as Keras' CSVLogger lays them out: a header, "epoch" then the other columns sorted by name,
    one row per epoch (an epoch stopped part way and finished after a resume: its finished row)."""
    last = {row["epoch"]: row for row in rows}  # rows come in step order: a later row of an epoch supersedes
    columns = ["epoch"] + sorted({key for row in last.values() for key in row} - {"epoch"})
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for epoch in sorted(last):
        writer.writerow(last[epoch])
    return out.getvalue()


def _parse_row(line: bytes) -> dict[str, Any] | None:
    """A metrics row, or None unless the line is a JSON object with integer "epoch" and "step"."""
    try:
        row = json.loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep to read
        return None
    if not isinstance(row, dict):
        return None
    for key in ("epoch", "step"):
        if not is_int(row.get(key)) or row[key] < 0:
            return None
    return row


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
