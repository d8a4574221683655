"""The trained models shipped inside the package: ``npvit.load("pretrained:cifar10")``, no training, no download.

Each model is one folder of this package (the registry root), named as users name it:

    zoo/cifar10/weights.npz    the parameters, ``param/<name>`` arrays (float16 or float32; no pickle)
    zoo/cifar10/config.json    the model config, the stored and the computing dtype, the input normalisation,
                               the class names, the run's settings, the weights' SHA-256
    zoo/cifar10/metrics.json   test loss, top-1 and top-5, the parameter count and classes, predictions on a
                               seeded batch of noise images, the command that wrote the folder, its date and
                               machine

``python -m npvit.export RUN --pretrained NAME [--half] --data-dir PATH`` writes such a folder
(``npvit.zoo.ship``). This module only finds the folders and reads their JSON; ``npvit.loading`` builds the
model. The root is this package's folder, or ``$NPVIT_PRETRAINED_DIR`` (or a ``root`` argument) for a
registry elsewhere, which is how the tests ship a tiny model without touching the package.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT", "FILES", "MAX_BYTES", "PREFIX", "ROOT_ENV", "PretrainedError", "check_name", "entry_folder",
           "list_pretrained", "pretrained_name", "read_json", "registry_root"]

PREFIX = "pretrained:"
"""How a command line names a shipped model: ``pretrained:cifar10``."""
DEFAULT = "cifar10"
"""The model ``npvit.predict`` and ``npvit.visualize`` use when no checkpoint is given."""
ROOT_ENV = "NPVIT_PRETRAINED_DIR"
"""A registry folder used instead of the package's own."""
WEIGHTS, CONFIG, METRICS = "weights.npz", "config.json", "metrics.json"
FILES = (WEIGHTS, CONFIG, METRICS)
MAX_BYTES = 2 * 2**20
"""The three files of a shipped model together: at most 2 MiB, so the package stays a small download."""
FORMAT_VERSION = 1

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")  # one folder name: no separators, no "..", no hidden files


class PretrainedError(ValueError):
    """A shipped model that does not exist or cannot be read; the message says which names exist."""


def registry_root(root: str | os.PathLike | None = None) -> Path:
    """The registry folder: ``root`` if given, else ``$NPVIT_PRETRAINED_DIR`` if set, else this package's."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ROOT_ENV)
    return Path(env) if env else Path(__file__).resolve().parent


def list_pretrained(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the shipped models (folders holding a config.json and a weights.npz), sorted."""
    folder = registry_root(root)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if _NAME.fullmatch(p.name) and (p / CONFIG).is_file() and (p / WEIGHTS).is_file())


def pretrained_name(source: str | os.PathLike) -> str | None:
    """``"cifar10"`` for ``"pretrained:cifar10"``; None for any other source (a path)."""
    text = os.fspath(source)
    return text[len(PREFIX):] if isinstance(text, str) and text.startswith(PREFIX) else None


def check_name(name: str) -> str:
    """``name`` if it can name a model folder (lower-case letters, digits, ``_ . -``; 64 at most), else
    PretrainedError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PretrainedError(f"{str(name)[:80]!r} cannot name a pretrained model: use lower-case letters, digits, "
                              "'_', '.' and '-' (starting with a letter or digit, 64 at most), e.g. cifar10")
    return name


def entry_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of shipped model ``name``; PretrainedError naming the models that exist otherwise."""
    available = list_pretrained(root)
    if name in available:
        return registry_root(root) / name
    where = registry_root(root)
    shipped = f"the available names are {', '.join(PREFIX + n for n in available)}" if available else \
        f"this installation ships no pretrained model yet ({where} holds none)"
    raise PretrainedError(f"no pretrained model named {str(name)[:80]!r}: {shipped}. A run folder or checkpoint "
                          "of your own works wherever a pretrained name does.")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; PretrainedError if it is missing, not strict JSON, or not an object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise PretrainedError(f"{path} is missing: the pretrained model's folder is incomplete; reinstall npvit "
                              "or write the folder again with python -m npvit.export RUN --pretrained NAME") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PretrainedError(f"cannot read {path}: {exc}. The file is damaged; reinstall npvit or write the "
                              "folder again with python -m npvit.export RUN --pretrained NAME") from None
    if not isinstance(doc, dict):
        raise PretrainedError(f"{path} holds a JSON {type(doc).__name__}, not an object: the file is damaged")
    return doc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
