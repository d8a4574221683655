"""Export a model for other tools: ``python -m npvit.export SOURCE OUT``, the format chosen by OUT's suffix.

    python -m npvit.export runs/cifar10-fast model.onnx                  # a run folder (best.npz, else last.npz)
    python -m npvit.export runs/cifar10-fast/last.npz model.safetensors  # a checkpoint
    python -m npvit.export vit.safetensors vit.onnx --arch vit_base_patch16_224   # a timm or Google file
    python -m npvit.export model.safetensors model.pt                    # a file npvit.export wrote

OUT: .safetensors (timm's names for timm's architectures, npvit's otherwise), .onnx (opset 17, dynamic
batch; input "images" (batch, S, S, 3) normalised, channels last; output "logits") or .pt (a PyTorch state
dict). The run's normalisation, the class names and the config travel in the file's metadata (safetensors,
ONNX). Needs the interop extra: pip install 'npvit[interop]' (and torch for .pt).

In Python, ``npvit.export(model, path)`` does the same for a model in memory.
"""

from __future__ import annotations

import argparse
import sys
import types

from .backend import BackendUnavailableError
from .checkpoint import CheckpointError
from .cli.args import positive_int
from .cli.status import run_command
from .config import TIMM_ARCHS
from .interop import InteropError
from .interop.export import FORMATS, export
from .loading import load


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m npvit.export", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:7]))
    parser.add_argument("source", help="a run folder, a checkpoint, an exported .safetensors, or a timm / "
                        "Google file with --arch")
    parser.add_argument("out", help=f"the file to write: {', '.join(FORMATS)}")
    parser.add_argument("--arch", choices=TIMM_ARCHS, metavar="ARCH",
                        help="the timm architecture of a timm .safetensors or Google .npz SOURCE (e.g. "
                             "vit_base_patch16_224)")
    parser.add_argument("--num-classes", type=positive_int, help="with --arch: a new head of this many classes")
    parser.add_argument("--image-size", type=positive_int,
                        help="with --arch: resample the position embedding to this image side")
    parser.add_argument("--global-pool", choices=("token", "avg"), default="token",
                        help="with --arch: the class token's output (default) or the patch tokens' mean")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    expected = (CheckpointError, InteropError, BackendUnavailableError, OSError)
    return run_command(lambda: _export_command(args), expected)


def _export_command(args: argparse.Namespace) -> int:
    if args.arch is None and (args.num_classes or args.image_size or args.global_pool != "token"):
        raise InteropError("--num-classes, --image-size and --global-pool apply to a timm file: give its --arch")
    options = dict(num_classes=args.num_classes, image_size=args.image_size, global_pool=args.global_pool) \
        if args.arch else {}
    loaded = load(args.source, arch=args.arch, **options)
    stats = None
    if loaded.preprocess is None:  # an npvit run: its input statistics
        stats = {"mean": loaded.augmenter.mean.tolist(), "variance": loaded.augmenter.variance.tolist()}
    names = loaded.meta.get("class_names")
    path = export(loaded.model, args.out, class_names=names, normalization=stats, run=loaded.run)
    size = path.stat().st_size
    print(f"wrote {path} ({loaded.model.num_params():,} parameters, {size / 2**20:.1f} MiB)")
    return 0


class _CallableModule(types.ModuleType):
    """This module, callable as ``npvit.export(model, path)``: importing ``npvit.export`` makes the package's
    ``export`` attribute this module instead of the function, so the module answers calls the same way."""

    def __call__(self, *args: object, **kwargs: object) -> object:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
