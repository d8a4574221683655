"""What the fault tests check after each damaged file or bad flag: one clear message and no traceback, and
every file that existed before left byte for byte unchanged; plus the markers for the tests that need the viz
extra (Pillow, matplotlib)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

try:
    from PIL import Image as PIL_Image
except ImportError:  # the viz extra is optional: the tests that read or write images skip without it
    PIL_Image = None

needs_pillow = pytest.mark.skipif(PIL_Image is None, reason="Pillow (the viz extra) is not installed")
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None or PIL_Image is None,
                                      reason="matplotlib and Pillow (the viz extra) are not installed")


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``: to prove that nothing there changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(text: str, *needles: str) -> None:
    """stderr is one ``error: ...`` message (it may wrap onto several lines, but holds no traceback)."""
    assert text.startswith("error: "), text
    assert "Traceback" not in text and text.count("error: ") == 1, text
    for needle in needles:
        assert needle in text, (needle, text)
