"""The optional plotting and image-reading libraries (the ``viz`` extra), imported only when needed.

The engine and training program run on NumPy and SciPy alone; matplotlib and Pillow are needed only to read
image files and draw figures, so they are imported here, lazily, and their absence becomes one clear error
naming the extra to install instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'npvit[viz]'"


class MissingExtraError(RuntimeError):
    """matplotlib or Pillow is not installed; the message says what to install."""


def _import(name: str, needs: str, who: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingExtraError(f"{who} needs {needs}: {INSTALL_HINT} (import {name} failed: {exc})") from exc


def pillow_image(who: str = "npvit.visualize", needs: str = "matplotlib and Pillow") -> ModuleType:
    """``PIL.Image``, or MissingExtraError saying that ``who`` needs the viz extra."""
    return _import("PIL.Image", needs, who)


def matplotlib_figure(who: str = "npvit.visualize") -> ModuleType:
    """``matplotlib.figure`` (figures built without pyplot, so no GUI backend is ever touched), with Pillow
    checked too, since every figure is written through it."""
    _import("matplotlib", "matplotlib and Pillow", who)
    pillow_image(who)
    return _import("matplotlib.figure", "matplotlib and Pillow", who)
