"""Fresh Python processes that run this checkout of npvit (not an installed copy): for exit statuses,
signals, imports and anything else that needs a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/support/ is two floors down


def checkout_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout first on PYTHONPATH, plus ``extra``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def run_python(*args: str, timeout: float = 120, env: dict | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` (``-m npvit.x ...`` or ``-c CODE ...``) in a fresh process, its output captured as text."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=checkout_env(**(env or {})), cwd=cwd)
