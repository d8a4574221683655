"""Images that must be refused with one message or read without a traceback: more pixels than the limit
(checked from the header, before decoding; --max-pixels raises it), and a constant float TIFF beyond 2**53.
Real ``python -m npvit.predict`` and ``npvit.visualize`` processes on a tiny trained run."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

PIL_Image = pytest.importorskip("PIL.Image")

ROOT = Path(__file__).resolve().parents[2]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-W", "error::Warning", "-m", module, *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("images") / "run"
    done = run_module("npvit.train", "--dataset", "synthetic", "--synthetic-size", "64,8", "--synthetic-image-size",
                      "8", "--synthetic-classes", "3", "--preset", "tiny", "--batch-size", "32", "--epochs", "1",
                      "--threads", "1", "--quiet", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header says width x height (8-bit RGB) and whose pixels are a few zero bytes: what a
    decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_an_image_of_too_many_pixels_is_refused_before_decoding(run, tmp_path) -> None:
    png_header_only(tmp_path / "huge.png", 11_000, 11_000)  # 121 megapixels, 363 MB decoded
    done = run_module("npvit.predict", str(run), str(tmp_path / "huge.png"))
    assert done.returncode == 2, done.stderr
    assert "11000x11000, 121.0 megapixels, more than the limit of 64; reduce it, or raise the limit with " \
           "--max-pixels 121000000" in done.stderr
    assert "Traceback" not in done.stderr and "DecompressionBomb" not in done.stderr

    PIL_Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / "small.png")
    done = run_module("npvit.predict", str(run), str(tmp_path / "small.png"), "--max-pixels", "500")
    assert done.returncode == 2 and "20x30" not in done.stderr and "30x20, 0.0 megapixels" in done.stderr
    done = run_module("npvit.predict", str(run), str(tmp_path / "small.png"), "--max-pixels", "600")
    assert done.returncode == 0, done.stderr
    done = run_module("npvit.visualize", "attention", str(run), str(tmp_path / "small.png"), "--max-pixels", "500",
                      "--out", str(tmp_path / "a.png"))
    assert done.returncode == 2 and "30x20, 0.0 megapixels" in done.stderr, done.stderr


def test_a_constant_float_image_beyond_2_to_the_53_is_read(run, tmp_path) -> None:
    PIL_Image.fromarray(np.full((8, 8), 2.0 ** 60, np.float32), "F").save(tmp_path / "flat.tif")
    done = run_module("npvit.predict", str(run), str(tmp_path / "flat.tif"))
    assert done.returncode == 0, done.stderr
    assert "flat.tif" in done.stdout and "Traceback" not in done.stderr
