"""Files npvit writes, under faults: a writer killed mid-write or failing leaves the previous file and no
half-written one, its leftovers are cleaned up (and only its own); JSON holds no bare NaN, and numbers read
back must fit a float."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fault_checks import digests
from processes import checkout_env

from npvit.files import atomic_write, dumps_finite, is_finite_number, is_int, is_temp_file, remove_stale_temp_files

pytestmark = pytest.mark.usefixtures("private_cache")  # no test touches the real dataset cache


KILLED_WRITER = """
import os, sys, time
from npvit.files import atomic_write
def write(f):
    f.write(b"partial checkpoint " * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
atomic_write(sys.argv[1], write)
"""


def test_a_writer_killed_mid_write_leaves_the_old_file_and_a_temp_file_that_is_cleaned_up(tmp_path: Path) -> None:
    target = tmp_path / "last.npz"
    target.write_bytes(b"the previous checkpoint")
    keep = {"notes.tmp": b"a user's file", ".x.tmp": b"hidden, but not ours", "data.npvit-tmp": b"not hidden"}
    for name, data in keep.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / ".folder.npvit-tmp").mkdir()
    before = digests(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                            env=checkout_env())
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.stdout.close()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".last.npz.")]
    assert len(leftovers) == 1 and is_temp_file(leftovers[0]) and leftovers[0].stat().st_size > 0
    assert target.read_bytes() == b"the previous checkpoint"
    assert remove_stale_temp_files(tmp_path) == leftovers
    assert digests(tmp_path) == before and (tmp_path / ".folder.npvit-tmp").is_dir()  # only ours went
    legacy = tmp_path / ".best.npz.a1b2c3d_.tmp"  # as earlier versions named them
    legacy.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == [legacy] and remove_stale_temp_files(tmp_path / "none") == []


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_dumps_finite() -> None:
    text, replaced = dumps_finite({"a": [1.0, math.nan], "b": {"c": math.inf}, "d": "NaN"})
    assert json.loads(text) == {"a": [1.0, None], "b": {"c": None}, "d": "NaN"}
    assert replaced == ["a[1]", "b.c"]


def test_json_numbers_read_back_must_fit_a_float() -> None:
    assert is_finite_number(3) and is_finite_number(-2.5) and is_finite_number(10**308)
    assert not any(is_finite_number(v) for v in (10**400, -(10**400), math.nan, math.inf, True, "1", None))
    assert is_int(7) and not is_int(True) and not is_int(7.0)
