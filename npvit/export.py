"""Export a model for other tools: ``python -m npvit.export SOURCE OUT``, the format chosen by OUT's suffix.

    python -m npvit.export runs/cifar10-fast model.onnx                  # a run folder (best.npz, else last.npz)
    python -m npvit.export runs/cifar10-fast/last.npz model.safetensors  # a checkpoint
    python -m npvit.export vit.safetensors vit.onnx --arch vit_base_patch16_224   # a timm or Google file
    python -m npvit.export model.safetensors model.pt                    # a file npvit.export wrote
    python -m npvit.export runs/cifar10-fast --pretrained cifar10 --half --data-dir PATH   # ship it in npvit

OUT: .safetensors (timm's names for timm's architectures, npvit's otherwise), .onnx (opset 17, dynamic
batch; input "images" (batch, S, S, 3) normalised, channels last; output "logits") or .pt (a PyTorch state
dict). The run's normalisation, the class names and the config travel in the file's metadata (safetensors,
ONNX). Needs the interop extra: pip install 'npvit[interop]' (and torch for .pt).

``--pretrained NAME`` writes the run as a model shipped inside the package instead (``npvit/zoo/NAME/``,
loaded as ``pretrained:NAME``), after evaluating it on the test split (``npvit.zoo.ship``).

In Python, ``npvit.export(model, path)`` does the same for a model in memory.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import types

from .backend import BackendUnavailableError
from .checkpoint import CheckpointError
from .cli.args import non_negative_int, positive_int
from .cli.status import run_command
from .config import TIMM_ARCHS
from .data import DataError
from .interop import InteropError
from .interop.export import FORMATS, export
from .loading import load


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m npvit.export", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:8]))
    parser.add_argument("source", help="a run folder, a checkpoint, an exported .safetensors, pretrained:NAME, or "
                        "a timm / Google file with --arch")
    parser.add_argument("out", nargs="?", help=f"the file to write: {', '.join(FORMATS)} (not with --pretrained)")
    parser.add_argument("--arch", choices=TIMM_ARCHS, metavar="ARCH",
                        help="the timm architecture of a timm .safetensors or Google .npz SOURCE (e.g. "
                             "vit_base_patch16_224)")
    parser.add_argument("--num-classes", type=positive_int, help="with --arch: a new head of this many classes")
    parser.add_argument("--image-size", type=positive_int,
                        help="with --arch: resample the position embedding to this image side")
    parser.add_argument("--global-pool", choices=("token", "avg"), default="token",
                        help="with --arch: the class token's output (default) or the patch tokens' mean")
    ship = parser.add_argument_group("shipping a run inside the package (npvit.zoo)")
    ship.add_argument("--pretrained", metavar="NAME", help="write the run as the package's model NAME "
                      "(npvit/zoo/NAME/: weights, config.json, metrics.json), loaded as pretrained:NAME")
    ship.add_argument("--half", action="store_true", help="with --pretrained: store float16, refused if test "
                      "top-1 moves more than 0.05 points")
    ship.add_argument("--data-dir", help="with --pretrained: existing copy of the run's dataset, whose test split "
                      "is measured (default: the download cache; nothing is downloaded)")
    ship.add_argument("--cache-dir", help="with --pretrained: download cache (default $NPVIT_CACHE or ~/.cache/npvit)")
    ship.add_argument("--eval-shift", type=non_negative_int, metavar="PIXELS", help="with --pretrained: the "
                      "test-time shifts the shipped model is measured and predicts with (npvit.evaluate; default: "
                      "as the run's checkpoint records)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command = "python -m npvit.export " + shlex.join(argv)
    expected = (CheckpointError, InteropError, BackendUnavailableError, DataError, OSError)
    return run_command(lambda: _export_command(args), expected)


def _export_command(args: argparse.Namespace) -> int:
    if args.pretrained is not None:
        return _ship_command(args)
    if args.out is None:
        raise InteropError("name the file to write (OUT: .safetensors, .onnx or .pt), or give --pretrained NAME")
    if args.half or args.data_dir or args.cache_dir or args.eval_shift is not None:
        raise InteropError("--half, --data-dir, --cache-dir and --eval-shift apply to --pretrained NAME")
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


def _ship_command(args: argparse.Namespace) -> int:
    from .zoo.ship import ship

    if args.out is not None or args.arch is not None:
        raise InteropError(f"--pretrained writes npvit/zoo/{args.pretrained}/ from a run folder or checkpoint: give "
                           "no OUT file and no --arch")
    ship(args.source, args.pretrained, half=args.half, data_dir=args.data_dir, cache_dir=args.cache_dir,
         command=args.command, progress=True, eval_shift=args.eval_shift)
    return 0


class _CallableModule(types.ModuleType):
    """This module, callable as ``npvit.export(model, path)``: importing ``npvit.export`` makes the package's
    ``export`` attribute this module instead of the function, so the module answers calls the same way."""

    def __call__(self, *args: object, **kwargs: object) -> object:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
