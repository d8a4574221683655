"""The two ways reading or writing another library's file can fail, each one clear message."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'npvit[interop]'"


class InteropError(ValueError):
    """A file, mapping or request that cannot be turned into what was asked for; the message names the file
    and what is wrong (a missing key, a shape that does not fit the arch, a pickle file)."""


class MissingInteropExtra(InteropError):
    """safetensors or onnx is not installed; the message says which extra to install."""


def require(module: str, who: str, hint: str = INSTALL_HINT) -> ModuleType:
    """Import ``module`` (an optional dependency), or raise MissingInteropExtra saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingInteropExtra(f"{who} needs {module.split('.')[0]}: {hint} "
                                  f"(import {module} failed: {exc})") from exc
