"""Figures of a trained model: ``python -m npvit.visualize FIGURE ...`` (or ``npvit-visualize``).

    python -m npvit.visualize patches   RUN_OR_CHECKPOINT [IMAGE] [--seed 0]
    python -m npvit.visualize attention RUN_OR_CHECKPOINT [IMAGE] [--query ROW,COL|cls]
    python -m npvit.visualize rollout   RUN_OR_CHECKPOINT [IMAGE] [--query ROW,COL|cls|mean]
    python -m npvit.visualize pos-embed RUN_OR_CHECKPOINT
    python -m npvit.visualize filters   RUN_OR_CHECKPOINT [--pca]
    python -m npvit.visualize curves    RUN_FOLDER
    python -m npvit.visualize attention vit.safetensors cat.jpg --arch vit_base_patch16_224   # a timm file
    python -m npvit.visualize attention cat.jpg                   # the model shipped with npvit

Without RUN_OR_CHECKPOINT, the model shipped with the package (pretrained:cifar10) is shown. Without IMAGE, the image is one of the run's test split (``--test-index``, default 0; ``--data-dir`` as for
``npvit.evaluate``). Each writes one PNG (``--out``, default FIGURE.png) at ``--dpi`` (default 100).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import BACKEND_NAMES, BackendUnavailableError
from ..checkpoint import CheckpointError
from ..cli.args import bounded, non_negative_int, positive_int
from ..cli.status import run_command
from ..config import TIMM_ARCHS
from .extras import MissingExtraError
from .inputs import FITS, InputError

FIGURES = ("patches", "attention", "rollout", "pos-embed", "filters", "curves")
MAX_DPI = 1200  # print quality; the figures are at most about 10 inches a side


def query_arg(text: str) -> Any:
    from .attention import parse_query

    try:
        return parse_query(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m npvit.visualize",
                                     description="Figures of a trained model, one PNG per command.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    sub = parser.add_subparsers(dest="figure", required=True, metavar="FIGURE",
                                help=", ".join(FIGURES) + " (each has --help)")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--out", help="PNG file to write (default FIGURE.png in the current folder)")
    output.add_argument("--dpi", type=bounded(0, MAX_DPI), default=100.0,
                        help=f"pixels per inch, at most {MAX_DPI} (default 100)")
    output.add_argument("--title", help="figure title (default: says what is shown)")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("checkpoint", nargs="?", help="a .npz checkpoint written by npvit.train, or its run folder "
                       "(best.npz, else last.npz), or pretrained:NAME; with --arch, a timm or Google file "
                       "(default: pretrained:cifar10, the model shipped with npvit)")
    model.add_argument("--arch", choices=TIMM_ARCHS, metavar="ARCH",
                       help="the timm architecture of a timm .safetensors or Google .npz file")
    model.add_argument("--backend", choices=BACKEND_NAMES, default="numpy")
    image = argparse.ArgumentParser(add_help=False)
    image.add_argument("image", nargs="?", help="an image file (default: a test image of the run's dataset)")
    image.add_argument("--test-index", type=non_negative_int, default=0,
                       help="without IMAGE: this image of the run's test split (default 0)")
    image.add_argument("--data-dir", help="existing copy of the dataset (archive or extracted folder)")
    image.add_argument("--cache-dir", help="download cache (default $NPVIT_CACHE or ~/.cache/npvit)")
    image.add_argument("--no-download", dest="download", action="store_false", help="fail instead of downloading")
    image.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                       help="refuse image files of more pixels than this (default 64000000), before decoding them")
    image.add_argument("--fit", choices=FITS, default="crop",
                       help="non-square image files: centre crop (default) or stretch to a square")

    p = sub.add_parser("patches", parents=[model, image, output], help="the image cut into patches, before and "
                       "after a training augmentation")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation draw (default 0)")
    p = sub.add_parser("attention", parents=[model, image, output],
                       help="attention of one query, every block and head, over the image")
    p.add_argument("--query", type=query_arg, help="patch ROW,COL from 0 at the top left, or cls (default: "
                   "the class token, or the centre patch for models without one)")
    p = sub.add_parser("rollout", parents=[model, image, output], help="attention rollout over the network")
    p.add_argument("--query", type=query_arg, help="patch ROW,COL, cls, or mean (over all query tokens); "
                   "default: cls for class-token models, else mean")
    p.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean",
                   help="how heads are combined in each block (default mean, as the paper)")
    sub.add_parser("pos-embed", parents=[model, output], help="cosine similarity of the position embeddings")
    p = sub.add_parser("filters", parents=[model, output], help="the learned patch-projection filters")
    p.add_argument("--pca", action="store_true", help="show the first principal components instead (the paper)")
    p.add_argument("--components", type=positive_int, default=28, help="with --pca: how many (default 28, as the paper)")
    p = sub.add_parser("curves", parents=[output], help="loss, top-1, top-5 and learning rate of a run")
    p.add_argument("run", help="a run folder written by npvit.train (or its metrics.jsonl)")
    return parser


def pick_image(args: argparse.Namespace, loaded: Any) -> tuple[np.ndarray, str]:
    """The uint8 image at the run's native size, and words saying where it came from."""
    from .inputs import MAX_PIXELS, dataset_image, model_image

    if args.image:
        return model_image(loaded, args.image, args.fit, args.max_pixels or MAX_PIXELS), Path(args.image).name
    image, label = dataset_image(loaded, args.test_index, args.data_dir, args.cache_dir, args.download)
    return image, f"{loaded.run.get('dataset', 'dataset')} test image {args.test_index} ({label})"


def make_figure(args: argparse.Namespace) -> Any:
    """Build the figure the arguments ask for."""
    if args.figure == "curves":
        from .curves import curves_figure, read_run_metrics, run_folder

        rows, summary = read_run_metrics(args.run)
        return curves_figure(rows, summary, args.title or f"training curves: {run_folder(args.run).name}")

    from .inputs import display_image, load_model, model_and_image

    if "image" in args:  # a lone argument that is no model is the image
        args.checkpoint, args.image = model_and_image(args.checkpoint, args.image, args.arch)
    elif args.checkpoint is None:
        args.checkpoint, _ = model_and_image(None, None, args.arch)
    loaded = load_model(args.checkpoint, args.backend, args.arch)
    cfg, name = loaded.config, loaded.path.parent.name or loaded.path.name
    if args.figure == "pos-embed":
        from .pos_embed import pos_embed_figure, position_similarity

        sim = position_similarity(loaded.param("pos_embed"), cfg)
        return pos_embed_figure(sim, cfg, args.title or f"position embedding similarity: {name}")
    if args.figure in ("filters", "patches") and cfg.tokenizer != "patch":
        raise InputError(f"the {args.figure} figure shows how a patch embedding cuts and projects the image, and "
                         f"{name} has a convolutional tokenizer (tokenizer {cfg.tokenizer}); its attention, "
                         "rollout and pos-embed figures apply")
    if args.figure == "filters":
        from .filters import filter_tiles, filters_figure

        tiles, explained = filter_tiles(loaded.param("patch_embed.proj.w"), cfg, args.pca, args.components)
        return filters_figure(tiles, explained, cfg, args.title or name)

    raw, source = pick_image(args, loaded)
    shown = display_image(raw, cfg.image_size)
    if args.figure == "patches":
        from .patches import augment_for_display, patches_figure

        run = loaded.run
        after = augment_for_display(raw, cfg.image_size, run, args.seed)
        settings = (f"\n(seed {args.seed}; flip {'on' if run.get('flip', True) else 'off'}, rotation "
                    f"{run.get('rotation', 0.02)}, zoom {run.get('zoom', 0.2)})")
        return patches_figure(shown, after, cfg, args.title or source, settings)

    from .attention import (
        attention_figure,
        forward_with_attention,
        query_token,
        rollout_figure,
    )

    token = query_token(cfg, args.query, rollout=args.figure == "rollout")
    maps, probs = forward_with_attention(loaded, raw)
    best = int(np.argmax(probs))
    title = args.title or f"{source}: predicted {loaded.class_names[best]} ({100 * probs[best]:.1f}%)"
    if args.figure == "attention":
        return attention_figure(shown, maps, cfg, token, title)
    return rollout_figure(shown, maps, cfg, token, args.head_fusion, title)


def main(argv: list[str] | None = None) -> int:
    from ..data import DataError

    args = build_parser().parse_args(argv)
    expected = (CheckpointError, InputError, MissingExtraError, BackendUnavailableError, DataError, OSError)
    return run_command(lambda: _visualize_command(args), expected, "; try a lower --dpi")


def _visualize_command(args: argparse.Namespace) -> int:
    from .extras import matplotlib_figure
    from .plotting import save_png

    out = Path(args.out or f"{args.figure}.png")
    matplotlib_figure()  # a missing extra is reported before any model or data is loaded
    fig = make_figure(args)
    try:
        width, height = save_png(fig, out, args.dpi)
    except OSError as exc:
        raise OSError(f"cannot write {out}: {exc}") from exc
    print(f"wrote {out} ({width}x{height} pixels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
