"""Classify image files with a trained model: the top-k classes and their probabilities.

    python -m npvit.predict cat.jpg dog.png                          # the model shipped with npvit
    python -m npvit.predict runs/cifar10-small/best.npz cat.jpg dog.png
    python -m npvit.predict runs/cifar10-small photos/ --top-k 3 --json
    python -m npvit.predict vit.safetensors cat.jpg --arch vit_base_patch16_224   # a timm or Google file

PNG and JPEG files of any size (any format Pillow reads, when named directly; a folder stands for its PNG
and JPEG files, sorted by name). Each image is reduced to the dataset's native size (32x32 for CIFAR) with an
antialiased resize, then preprocessed exactly as evaluation does; ``npvit.visualize.inputs`` says why. A run
trained with ``--eval-flip`` predicts from the mean of the logits of each image and its mirror image, as its
evaluation did (``--no-eval-flip`` to turn that off, ``--eval-flip`` to turn it on for any run), and one
trained with ``--eval-shift`` adds the shifted views its final test scored (``--eval-shift 0``: off). A timm model
sees each image as timm's evaluation transform makes it (npvit.interop.Preprocess) and, with a 1000-class
head, predicts ImageNet's class names. Without a checkpoint (the first argument is an image: not a run
folder, ``pretrained:NAME`` or a model file), the model shipped with the package, ``pretrained:cifar10``,
classifies the images (a line on stderr says so).
Needs Pillow, from the ``viz`` extra: ``pip install 'npvit[viz]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .backend import BACKEND_NAMES, BackendUnavailableError
from .checkpoint import CheckpointError
from .cli.args import non_negative_int, positive_int
from .cli.status import run_command
from .config import TIMM_ARCHS
from .files import dumps_finite

BATCH = 64  # images per forward pass: bounds memory for large folders


def top_k(probs: np.ndarray, class_names: list[str], k: int) -> list[list[dict[str, Any]]]:
    """For each row of ``probs``, the k most probable classes, most probable first (ties by class index)."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[{"class": class_names[j], "probability": float(p[j])} for j in row] for p, row in zip(probs, order)]


def predict_files(checkpoint: str | Path, paths: list[str | Path], k: int = 5, backend: str = "numpy",
                  fit: str = "crop", flip: bool | None = None, arch: str | None = None,
                  max_pixels: int | None = None, shift: int | None = None) -> list[dict[str, Any]]:
    """[{file, predictions: [{class, probability}, ...]}] for image files and folders, in the order given.
    ``flip``, ``shift``: test-time flip and shifts (``npvit.evaluate.view_logits``); None: as the run that wrote
    the checkpoint evaluated. ``arch``: the timm architecture of a timm or Google ``checkpoint`` file."""
    from .evaluate import shift_misfit, view_logits
    from .visualize.extras import pillow_image
    from .visualize.inputs import MAX_PIXELS, InputError, image_files, load_model, model_image, probabilities

    pillow_image("npvit.predict", needs="Pillow")  # before anything slow: a missing extra is one message
    files = image_files(list(paths))
    loaded = load_model(checkpoint, backend, arch)
    limit = max_pixels or MAX_PIXELS
    images = [model_image(loaded, f, fit, limit) for f in files]  # every file readable, or stop
    flip = loaded.eval_flip if flip is None else flip
    shift = loaded.eval_shift if shift is None else shift
    misfit = shift_misfit(shift, loaded.native_size, loaded.native_size, of_model=True)
    if misfit:
        raise InputError(misfit)
    results = []
    for start in range(0, len(images), BATCH):
        batch = np.stack(images[start:start + BATCH])
        probs = probabilities(view_logits(loaded.model, loaded.model_input, batch, flip, shift))
        for f, preds in zip(files[start:start + BATCH], top_k(probs, loaded.class_names, k)):
            results.append({"file": str(f), "predictions": preds})
    return results


def format_results(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(r["file"])
        lines.extend(f"  {100 * p['probability']:6.2f}%  {p['class']}" for p in r["predictions"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .visualize.extras import MissingExtraError
    from .visualize.inputs import FITS, InputError

    parser = argparse.ArgumentParser(prog="python -m npvit.predict", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", metavar="[CHECKPOINT] IMAGE_OR_FOLDER",
                        help="the model: a .npz checkpoint written by npvit.train or its run folder, pretrained:NAME, "
                        "a .safetensors npvit.export wrote, with --arch a timm or Google file (default: "
                        "pretrained:cifar10); then image files or folders of them")
    parser.add_argument("--arch", choices=TIMM_ARCHS, metavar="ARCH",
                        help="the timm architecture of a timm or Google file (e.g. vit_base_patch16_224)")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--fit", choices=FITS, default="crop",
                        help="non-square images: centre crop (default) or stretch to a square")
    parser.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                        help="refuse images of more pixels than this (default 64000000), before decoding them")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default="numpy")
    parser.add_argument("--eval-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="predict from the mean of the logits of each image and its mirror image (test-time "
                             "flip; default: as the run that wrote the checkpoint evaluated)")
    parser.add_argument("--eval-shift", type=non_negative_int, default=None, metavar="PIXELS",
                        help="and of the image moved by PIXELS diagonally in the four directions (test-time "
                             "shifts, 0: off; default: as the run that wrote the checkpoint evaluated)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {file, predictions: [{class, probability}]}")
    args = parser.parse_args(argv)
    expected = (CheckpointError, InputError, MissingExtraError, BackendUnavailableError, OSError)
    return run_command(lambda: _predict_command(args), expected)


def _predict_command(args: argparse.Namespace) -> int:
    from .visualize.inputs import InputError, default_model, is_model_source

    first, rest = args.inputs[0], args.inputs[1:]
    if is_model_source(first, args.arch):
        if not rest:
            raise InputError(f"{first} is a model: give the image files or folders to classify after it")
        checkpoint, images = first, rest
    else:
        checkpoint, images = default_model(args.arch), args.inputs
    results = predict_files(checkpoint, images, args.top_k, args.backend, args.fit, args.eval_flip,
                            args.arch, args.max_pixels, args.eval_shift)
    if not args.json:
        print(format_results(results))
        return 0
    text, replaced = dumps_finite(results, indent=2)
    if replaced:
        print(f"warning: not finite (the model's outputs are NaN), written as null: {replaced[0]}"
              + (f" and {len(replaced) - 1} more" if len(replaced) > 1 else ""), file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
