"""The settings of a training run: one table of every setting with its default, the command line built from
it, and the checks that a value from the command line or from a run's config.json must pass.

    settings = resolve_settings(vars(build_parser().parse_args(argv)))   # defaults < resumed run < flags
    config = model_config(settings, num_classes)                         # the ViTConfig they describe

Every setting is a row of ``SETTINGS``: its name (``--name-with-dashes`` on the command line), its default,
what it means, and its argument type. The ``--help`` text and the ``(default ...)`` it shows are generated
from the rows, and the same argument type that parses a flag checks the value a resumed run reads back from
its config.json, so a file cannot hold a value the command line would refuse.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .backend import BACKEND_NAMES
from .cli.setting import Setting, model_setting as _model
from .cli.args import (fraction, int_list, non_negative, non_negative_int, open_fraction, positive, positive_int,
                       unit_interval)
from .config import ATTENTION_FANS, GELUS, GLOBAL_POOLS, POOLS, PRESETS, TIMM_ARCHS, TOKENIZERS, ViTConfig
from .data import DATASETS, LABEL_MODES, NATIVE_SIZES, DataError, Dataset, load_dataset
from .data import synthetic as synthetic_limits
from .files import is_finite_number, is_int
from .optim.adamw import DECAY_CONVENTIONS
from .recipes import RECIPE_HELP, RECIPES
from .optim.schedule import SCHEDULES

PRESET_HELP = {"keras": "the 2021 example", "keras-wide": "its current revision", "small": "32x32 input",
               "fast": "the fast recipe's", "compact": "CCT: conv tokenizer, sequence pooling",
               "cct": "CCT-2/3x2, the cct recipe's",
               "tiny": "for smoke tests"}
SEED_LIMIT = 2**63  # seeds are stored in JSON and fed to 64-bit generators


class UsageError(Exception):
    """A bad combination of flags or a run folder that cannot be used; the message says what to change."""


SETTINGS: tuple[Setting, ...] = (
    # data
    Setting("dataset", "cifar100", "the dataset", "data", "str", choices=DATASETS),
    Setting("data_dir", None, "existing copy: the .tar.gz archive or its extracted folder, binary or python "
            "layout (no download then)", "data", "str", metavar="PATH", nullable=True),
    Setting("cache_dir", None, "download cache (default $NPVIT_CACHE or ~/.cache/npvit)", "data", "str",
            metavar="DIR", nullable=True),
    Setting("label_mode", "fine", "CIFAR-100 labels: fine (100 classes) or coarse (20)", "data", "str",
            choices=LABEL_MODES),
    Setting("download", True, "download the dataset when no copy is found (else stop with an error)", "data", "bool"),
    Setting("allow_different_data", False, "resume on data other than the run recorded (else refused)", "data", "bool"),
    Setting("synthetic_size", (1000, 200), "synthetic train,test image counts", "data", "ints", int_list,
            metavar="TRAIN,TEST"),
    Setting("synthetic_image_size", 32, "synthetic image side", "data", "int", positive_int, metavar="N"),
    Setting("synthetic_classes", 10, "synthetic class count", "data", "int", positive_int, metavar="N"),
    Setting("validation_split", 0.1, "last fraction of train held out", "data", "float", fraction, metavar="F"),
    Setting("train_subset", None, "train on the first N training images only", "data", "int", positive_int,
            metavar="N", nullable=True),
    # model
    Setting("recipe", "keras", "defaults for every other setting: " + ", ".join(
        f"{k} ({v})" for k, v in RECIPE_HELP.items()) + "; flags given win", "model", "str",
        choices=tuple(RECIPES)),
    Setting("preset", "keras", "the model: " + ", ".join(f"{k} ({v})" for k, v in PRESET_HELP.items()),
            "model", "str", choices=tuple(sorted(PRESETS))),
    Setting("arch", None, "a timm ViT instead of --preset: " + ", ".join(TIMM_ARCHS) + " (timm's "
            "VisionTransformer, at --image-size, default the arch's)", "model", "str", choices=TIMM_ARCHS,
            metavar="ARCH", nullable=True),
    Setting("init_from", None, "start from trained weights: pretrained:NAME, a run folder or checkpoint, or with "
            "--arch a timm .safetensors or Google .npz file (docs/training.md); a new head for other classes; the "
            "default recipe is then finetune", "model", "str", metavar="SOURCE", nullable=True),
    Setting("global_pool", "token", "with --arch: token (the class token's output) or avg (the patch tokens' "
            "mean, then the norm)", "model", "str", choices=GLOBAL_POOLS),
    _model("image_size", "image_size", "int", positive_int, "input side after resizing", "N"),
    _model("patch_size", "patch_size", "int", positive_int, "patch side", "N"),
    _model("patch_overlap", "patch_overlap", "int", non_negative_int, "pixels each patch reaches past its cell on "
           "every side (0: side by side, as the paper)", "N"),
    _model("projection_dim", "dim", "int", positive_int, "token width; key_dim and transformer units follow it "
           "unless given", "N"),
    _model("num_heads", "num_heads", "int", positive_int, "attention heads", "N"),
    _model("key_dim", "key_dim", "int", positive_int, "width of each head", "N"),
    _model("transformer_layers", "depth", "int", positive_int, "transformer blocks", "N"),
    _model("transformer_units", "mlp_units", "ints", int_list, "block MLP sizes", "LIST"),
    _model("mlp_head_units", "head_units", "ints", int_list, "classifier MLP sizes", "LIST"),
    _model("dropout", "dropout", "float", fraction, "block MLP dropout", "F"),
    _model("attention_dropout", "attention_dropout", "float", fraction, "attention dropout", "F"),
    _model("head_dropout", "head_dropout", "float", fraction, "classifier dropout", "F"),
    _model("drop_path", "drop_path", "float", fraction, "stochastic depth: drop path rate of the last block, "
           "rising linearly from 0 in the first", "F"),
    _model("pool", "pool", "str", None, "flatten (the example: all tokens), cls (the paper's class token), gap or "
           "seq (CCT's attention-weighted mean)", choices=POOLS),
    _model("tokenizer", "tokenizer", "str", None, "patch (patches projected linearly) or conv (CCT: conv 3x3 -> "
           "ReLU -> max-pool layers; --patch-size is then unused)", choices=TOKENIZERS),
    _model("conv_channels", "conv_channels", "ints", int_list, "with --tokenizer conv: its layers' channels, "
           "each layer halving the image side", "LIST"),
    _model("gelu", "gelu", "str", None, "erf (exact) or tanh", choices=GELUS),
    _model("attention_fans", "attention_fans", "str", None, "Glorot fans of the attention kernels: axes "
           "(Keras 3.15 and later) or receptive (older Keras, TensorFlow Keras)", choices=ATTENTION_FANS),
    # augmentation
    Setting("flip", True, "random horizontal flips", "augmentation (training only)", "bool"),
    Setting("rotation", 0.02, "rotation factor, fraction of a turn", "augmentation (training only)", "float",
            unit_interval, metavar="F"),
    Setting("zoom", 0.2, "zoom factor for height and width", "augmentation (training only)", "float",
            unit_interval, metavar="F"),
    Setting("crop_padding", 0, "random crop: pad each side by N black pixels, crop back to the native size "
            "(0: off)", "augmentation (training only)", "int", non_negative_int, metavar="N"),
    Setting("trivial_augment", False, "TrivialAugment Wide: each image gets one of 14 operations (shear, "
            "translate, rotate, brightness, colour, contrast, sharpness, posterize, solarize, autocontrast, "
            "equalize, identity) at a random strength, on the raw images after the crop",
            "augmentation (training only)", "bool"),
    Setting("trivial_augment_prob", 1.0, "with --trivial-augment, the fraction of images it changes; the others "
            "keep their pixels (a milder policy for small models and short runs)", "augmentation (training only)",
            "float", unit_interval, metavar="P"),
    Setting("mixup", 0.0, "Mixup: blend each image with a partner by lam ~ Beta(A, A), and the targets alike "
            "(0: off; with --cutmix, each image takes one of the two at random); training top-1 then counts "
            "the image's own label", "augmentation (training only)", "float", non_negative, metavar="A"),
    Setting("cutmix", 0.0, "CutMix: paste a box of a partner image, of area 1 - lam with lam ~ Beta(A, A), "
            "targets mixed by area (0: off)", "augmentation (training only)", "float", non_negative,
            metavar="A"),
    # optimisation
    Setting("batch_size", 256, "images per optimizer step", "optimisation", "int", positive_int, metavar="N"),
    Setting("epochs", 100, "epochs", "optimisation", "int", positive_int, metavar="N"),
    Setting("max_steps", None, "stop after this many optimizer steps in all", "optimisation", "int",
            positive_int, metavar="N", nullable=True),
    Setting("learning_rate", 1e-3, "AdamW learning rate", "optimisation", "float", non_negative, metavar="X",
            aliases=("--lr",)),
    Setting("weight_decay", 1e-4, "decoupled weight decay", "optimisation", "float", non_negative, metavar="X"),
    Setting("decay_convention", "keras", "keras: p -= lr*wd*p (Keras 3, PyTorch); tfa: p -= wd*p "
            "(TensorFlow Addons)", "optimisation", "str", choices=DECAY_CONVENTIONS),
    Setting("epsilon", 1e-7, "AdamW epsilon", "optimisation", "float", positive, metavar="X"),
    Setting("exclude_from_decay", False, "keep weight decay off biases, norms and embeddings", "optimisation",
            "bool"),
    Setting("clip_norm", None, "clip gradients to this global norm", "optimisation", "float", positive,
            metavar="X", nullable=True),
    Setting("lr_schedule", "constant", "learning-rate schedule", "optimisation", "str", choices=SCHEDULES),
    Setting("warmup_steps", 0, "linear warmup steps", "optimisation", "int", non_negative_int, metavar="N"),
    Setting("label_smoothing", 0.0, "label smoothing", "optimisation", "float", fraction, metavar="F"),
    Setting("ema", None, "keep an exponential moving average of the weights with this decay (e.g. 0.999, "
            "about the last 1/(1-DECAY) steps), validate it beside the raw weights and test it: best.npz holds "
            "it (default: off)", "optimisation", "float", open_fraction, metavar="DECAY", nullable=True),
    # evaluation
    Setting("eval_flip", False, "test-time flip: validate and test on the mean of the logits of each image and "
            "of its mirror image (evaluation takes twice as long)", "evaluation", "bool"),
    Setting("eval_shift", 0, "test-time shifts: the final test also scores each image moved by PIXELS rows and "
            "columns in the four diagonal directions, the border black as the training crop pads it, and "
            "averages the logits of the 5 views (10 with --eval-flip); the validation after each epoch does "
            "not use them (0: off)", "evaluation", "int", non_negative_int, metavar="PIXELS"),
    # execution
    Setting("backend", "numpy", "array library", "execution", "str", choices=BACKEND_NAMES),
    Setting("dtype", "float32", "parameter and activation dtype", "execution", "str",
            choices=("float32", "float64")),
    Setting("seed", 0, "seeds weights, data order, dropout and augmentation", "execution", "int",
            non_negative_int, metavar="N"),
    Setting("cuda_graph", False, "CuPy: capture the model's part of a full-batch training step once as a CUDA "
            "graph and launch it each step (off by default until a GPU measures it; docs/gpu.md)", "execution",
            "bool"),
    Setting("threads", None, "NumPy: batch shards run side by side (default: one per core, shared among the "
            "processes of a node); results do not depend on it", "execution", "int", positive_int, metavar="N",
            nullable=True),
    Setting("eval_batch_size", 256, "images per validation and test batch", "execution", "int", positive_int,
            metavar="N"),
    Setting("save_every", None, "also save last.npz every this many minutes within an epoch, so that a crash "
            "loses no more (default: at the end of each epoch only)", "execution", "float", positive,
            metavar="MINUTES", nullable=True),
    Setting("out", None, "run folder (default runs/<dataset>-<preset>)", "execution", "str", metavar="DIR",
            nullable=True),
    Setting("quiet", False, "no progress bar", "execution", "bool"),
    Setting("tensorboard", False, "also write the metrics and the learning rate of every step as TensorBoard "
            "event files in the run folder's tensorboard/ (needs tensorboardX: pip install 'npvit[tensorboard]')",
            "execution", "bool"),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}
DEFAULTS: dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}
"""Every setting of a run with its default. Model settings left as None come from the preset."""
RESUMABLE = frozenset({"data_dir", "cache_dir", "download", "allow_different_data", "backend", "threads",
                       "eval_batch_size", "eval_shift", "quiet", "epochs", "max_steps", "save_every", "tensorboard",
                       "cuda_graph"})
"""What may differ when a run is resumed: where things are, how it runs, how long it goes on, and how its final
test views the images."""


# ---- command line -----------------------------------------------------------------------------------------
def show(value: Any) -> str:
    """A value as the command line spells it: (128, 64) -> '128,64', 0.001 -> '0.001'."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_text(setting: Setting) -> str:
    """The --help line of a setting: what it does, then its default (or the keras preset's value)."""
    if setting.preset_field is not None:
        keras_value = getattr(ViTConfig.keras(), setting.preset_field)
        return f"{setting.help} (default from --preset; keras: {show(keras_value) or 'none'})"
    if setting.kind == "bool":
        return f"{setting.help} (default {'on' if setting.default else 'off'})"
    if setting.default is None:
        return setting.help
    return f"{setting.help} (default {show(setting.default)})"


def build_parser(description: str = "", epilog: str = "") -> argparse.ArgumentParser:
    """The command line: one flag per row of SETTINGS, plus --resume. Flags not given are absent from the
    parsed namespace (argparse.SUPPRESS), so resolve_settings knows what was given."""
    p = argparse.ArgumentParser(
        prog="python -m npvit.train", description=description, usage="%(prog)s [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS, epilog=epilog,
    )
    groups: dict[str, Any] = {}
    for setting in SETTINGS:
        group = groups.get(setting.group) or groups.setdefault(setting.group, p.add_argument_group(setting.group))
        if setting.kind == "bool":  # --name and --no-name, so that a recipe's choice can be undone
            group.add_argument(setting.flag, dest=setting.name, action=argparse.BooleanOptionalAction,
                               help=help_text(setting))
            continue
        group.add_argument(setting.flag, *setting.aliases, dest=setting.name, type=setting.type,
                           choices=setting.choices, metavar=setting.metavar, help=help_text(setting))
        if setting.name == "out":
            group.add_argument("--resume", metavar="DIR", help="continue the run in this folder from its last "
                                                               "checkpoint")
            group.add_argument("--config", metavar="FILE", help="start a new run with the settings of another "
                               "run (its config.json, or its folder); flags given still win")
    return p


# ---- checks -------------------------------------------------------------------------------------------------
def check_value(setting: Setting, value: Any) -> Any:
    """``value`` for ``setting`` in its canonical form (lists become tuples), or ValueError saying what is wrong.

    The argument type that parses the flag checks the range, so a value read from a file obeys the same rules
    as one typed on the command line; numbers must also be finite.
    """
    if value is None:
        if setting.nullable:
            return None
        raise ValueError("must not be null")
    kind = setting.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {value!r}")
        if setting.choices is not None and value not in setting.choices:
            raise ValueError(f"must be one of {', '.join(setting.choices)}, got {value!r}")
        return value
    if kind == "ints":
        if not isinstance(value, (list, tuple)) or not all(is_int(v) for v in value):
            raise ValueError(f"must be a list of integers, got {value!r}")
        text = show(value)
    elif kind == "int":
        if not is_int(value):
            raise ValueError(f"must be an integer, got {value!r}")
        text = str(value)
    else:  # float
        if not is_finite_number(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        text = repr(float(value))
    try:
        return setting.type(text) if setting.type is not None else value
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Every setting checked alone (check_value) and together. Returns the settings in canonical form;
    raises ValueError naming the first setting that is wrong."""
    checked = {}
    for setting in SETTINGS:
        try:
            checked[setting.name] = check_value(setting, settings[setting.name])
        except ValueError as exc:
            raise ValueError(f"{setting.flag} {exc}") from None
    if checked["seed"] >= SEED_LIMIT:
        raise ValueError(f"--seed must be below 2**63, got {checked['seed']}")
    try:  # the data settings together (two synthetic counts, coarse labels only for CIFAR-100, size bounds)
        check_data_settings(checked)
    except DataError as exc:
        raise ValueError(str(exc)) from None
    return checked


# ---- the data a run names ------------------------------------------------------------------------------------
#: The settings that say which dataset a run trains on; their defaults and checks are the table's.
DATA_SETTINGS = ("dataset", "label_mode", "data_dir", "cache_dir", "download", "synthetic_size",
                 "synthetic_image_size", "synthetic_classes", "seed")


def check_data_settings(run: Any) -> dict[str, Any]:
    """The data settings of ``run`` (config.json's "run", a checkpoint's ``meta["run"]`` or the flags), with
    the table's defaults for those it lacks, each checked as its flag is and together; otherwise
    :class:`DataError` naming the setting.

    Settings read back from a file are untrusted: a damaged or hand-edited file must give a clear error, never
    a traceback, and must not make the loader allocate without bound (a synthetic set of 10^9 images).
    """
    if not isinstance(run, dict):
        raise DataError(f"the run settings must be a JSON object, got {type(run).__name__}")
    out = {}
    for name in DATA_SETTINGS:
        setting = BY_NAME[name]
        value = run.get(name, setting.default)
        try:
            out[name] = check_value(setting, value)
        except ValueError as exc:
            text = str(exc) if len(str(exc)) <= 160 else str(exc)[:157] + "..."  # a file can hold any value
            raise DataError(f"the run setting {name} ({setting.flag}): {text}") from None
    if out["label_mode"] == "coarse" and out["dataset"] != "cifar100":
        raise DataError(f"the run setting label_mode (--label-mode) is coarse, but only CIFAR-100 has coarse "
                        f"labels; {out['dataset']} has one set of labels: use fine")
    if out["dataset"] == "synthetic":
        size, side, classes = out["synthetic_size"], out["synthetic_image_size"], out["synthetic_classes"]
        lim = synthetic_limits
        if len(size) != 2:
            raise DataError(f"the run setting synthetic_size (--synthetic-size) must be two integers, train,test, "
                            f"got {list(size)}")
        if side > lim.MAX_IMAGE_SIZE or classes > lim.MAX_CLASSES:
            raise DataError(f"synthetic images of at most {lim.MAX_IMAGE_SIZE} pixels a side and at most "
                            f"{lim.MAX_CLASSES:,} classes, got {side} and {classes}")
        if sum(size) > lim.MAX_IMAGES or sum(size) * side * side * 3 > lim.MAX_BYTES:
            raise DataError(f"the run setting synthetic_size (--synthetic-size) must be at most "
                            f"{lim.MAX_IMAGES:,} images and {lim.MAX_BYTES >> 30} GiB of pixels in all (train "
                            f"and test, {side}x{side}), got {list(size)}")
    return out


def native_image_size(run: Any) -> int:
    """The side of the images the run's dataset stores, before any resize to the model's input."""
    s = check_data_settings(run)
    return s["synthetic_image_size"] if s["dataset"] == "synthetic" else NATIVE_SIZES[s["dataset"]]


def load_run_dataset(run: Any, data_dir: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None = None, download: bool = True,
                     progress: bool = True) -> Dataset:
    """The dataset ``run``'s settings name (``data_dir`` and ``cache_dir`` as given, not the run's); raises
    :class:`DataError` for a bad setting, naming it, as for any data problem."""
    s = check_data_settings(run)
    extra = {}
    if s["dataset"] == "synthetic":
        extra = {"synthetic_size": tuple(s["synthetic_size"]), "image_size": s["synthetic_image_size"],
                 "num_classes": s["synthetic_classes"], "seed": s["seed"]}
    return load_dataset(s["dataset"], data_dir=data_dir, cache_dir=cache_dir, label_mode=s["label_mode"],
                        download=download, progress=progress, **extra)


# ---- resolving ----------------------------------------------------------------------------------------------
def resolve_settings(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Merge defaults, a resumed run's settings and the flags given. Returns (settings, resumed config doc).

    Raises UsageError for flags that do not fit together, a resumed run's config.json that cannot be read,
    or a value in it that the command line would refuse.
    """
    given = dict(given)
    resume = given.pop("resume", None)
    config = given.pop("config", None)
    if resume is not None and config is not None:
        raise UsageError("--config starts a new run from another run's settings and --resume continues a run: "
                         "give one of them")
    if resume is None:
        settings = dict(DEFAULTS)
        if config is not None:  # the other run's settings, all of them resolved, then the flags given
            folder = Path(config).parent if Path(config).is_file() else Path(config)
            settings.update({k: v for k, v in read_run_config(folder, "--config")[1].items() if k != "out"})
        if config is None or "recipe" in given:
            # Pretrained weights are fine-tuned unless a recipe is named
            recipe = given.get("recipe", "finetune" if given.get("init_from") else DEFAULTS["recipe"])
            settings.update(RECIPES.get(recipe, {}), recipe=recipe)
        settings.update(given)
        check_arch_settings(settings, given)
        if settings["out"] is None:
            model = settings["arch"] or settings["preset"]
            settings["out"] = str(Path("runs") / f"{settings['dataset']}-{model}")
        try:
            return check_settings(settings), None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    doc, saved = read_run_config(Path(resume))
    # Compare as JSON values: the saved file holds lists where the flags give tuples.
    changed = sorted(k for k in given if k not in RESUMABLE and _as_json(given[k]) != _as_json(saved.get(k)))
    if changed:
        flags = ", ".join(BY_NAME[k].flag for k in changed)
        resumable = ", ".join(BY_NAME[k].flag for k in sorted(RESUMABLE))
        raise UsageError(f"cannot change {flags} when resuming; only {resumable} may differ. "
                         "Start a new run (--out) to change them.")
    settings = dict(DEFAULTS, **saved)
    settings.update(given)
    settings["out"] = str(Path(resume))
    try:
        return check_settings(settings), doc
    except ValueError as exc:  # a flag given now, since the saved ones were checked on reading
        raise UsageError(str(exc)) from None


ARCH_MODEL_SETTINGS = ("image_size", "dropout", "attention_dropout", "head_dropout", "drop_path")
"""The model settings a timm arch (--arch) leaves free; the arch fixes the others."""


def check_arch_settings(settings: dict[str, Any], given: dict[str, Any]) -> None:
    """UsageError for flags that contradict --arch or need it."""
    if settings["arch"] is None and "global_pool" in given:
        raise UsageError("--global-pool needs --arch: a timm architecture (vit_tiny_patch16_224 ...)")
    fixed = [s.flag for s in SETTINGS if s.preset_field is not None and s.name not in ARCH_MODEL_SETTINGS
             and settings[s.name] is not None] + (["--preset"] if "preset" in given else [])
    if (settings["arch"] is not None or settings["init_from"] is not None) and fixed:
        what = f"--arch {settings['arch']}" if settings["arch"] else "--init-from"
        raise UsageError(f"{what} fixes the model: {', '.join(fixed)} cannot change it (only "
                         f"{', '.join(BY_NAME[n].flag for n in ARCH_MODEL_SETTINGS)} may)")


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def read_run_config(folder: Path, flag: str = "--resume") -> tuple[dict[str, Any], dict[str, Any]]:
    """The config.json of a run folder and its checked "run" settings. Raises UsageError if it is missing,
    unreadable or holds a value the command line would refuse."""
    path = folder / "config.json"
    if not path.is_file():
        raise UsageError(f"{flag} {folder}: no run there (expected {path}); pass the folder that --out named "
                         "when the run started")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UsageError(f"{flag} {folder}: cannot read {path} ({type(exc).__name__}: {str(exc)[:160]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("run"), dict):
        raise UsageError(f"{path} is not an npvit run config (a JSON object with the run's settings under "
                         "\"run\"); it was changed or damaged. Start a new run with --out.")
    saved = {k: v for k, v in doc["run"].items() if k in BY_NAME}
    for name, value in saved.items():
        try:
            saved[name] = check_value(BY_NAME[name], value)
        except ValueError as exc:
            raise UsageError(f"{path}: setting {name!r} {exc}; the file was changed or damaged. Restore it, or "
                             "start a new run with --out.") from None
    return doc, saved


def model_config(settings: dict[str, Any], num_classes: int) -> ViTConfig:
    """The ViTConfig of a run: the preset (or timm's arch), then every model flag that was given."""
    arch = settings.get("arch")
    if arch is not None:  # the arch fixes every field but the image size and the regularisation
        cfg = ViTConfig.timm(arch, num_classes, settings["image_size"], settings["global_pool"])
        settings = {k: v for k, v in settings.items() if k in ARCH_MODEL_SETTINGS
                    or getattr(BY_NAME.get(k), "preset_field", None) is None}
    else:
        cfg = PRESETS[settings["preset"]](num_classes=num_classes)
    dim = settings.get("projection_dim")
    if dim is not None and settings["preset"] != "keras-wide":
        # As in the 2021 example: key_dim = projection_dim, transformer_units = [2 * dim, dim].
        cfg = dataclasses.replace(cfg, dim=dim, key_dim=dim, mlp_units=(2 * dim, dim))
    elif dim is not None:
        cfg = dataclasses.replace(cfg, dim=dim, mlp_units=(2 * dim, dim))
    changes = {setting.preset_field: settings[setting.name] for setting in SETTINGS
               if setting.preset_field not in (None, "dim") and settings.get(setting.name) is not None}
    try:
        return dataclasses.replace(cfg, **changes)
    except ValueError as exc:
        raise UsageError(str(exc).replace("ViTConfig.", "model setting ")) from exc
