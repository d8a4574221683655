"""What the figures and ``npvit.predict`` look at: a trained model and images prepared the way training saw them.

Image files of any size go through two steps, and the order matters:

1. Reduced to the dataset's native size (32x32 for CIFAR; ``synthetic_image_size`` for the synthetic set)
   with Pillow's antialiased Lanczos filter, after a centre crop to a square (``fit="crop"``, the default,
   which keeps the object's proportions) or a plain squash (``fit="stretch"``). A photo has far more detail
   than a 32x32 CIFAR image; the model never saw that detail, and the Augmenter's bilinear resize is not
   antialiased (Keras ``Resizing`` is not), so feeding it a large photo directly would alias badly.
2. Passed through the run's own ``Augmenter(..., training=False)`` exactly as evaluation does: per-channel
   normalisation with the training-set statistics, then the bilinear resize to the model's ``image_size``
   (72x72 for the Keras preset, which was trained on 32x32 CIFAR images upsampled this very way).

So an image file reaches the model as a CIFAR test image would. A model loaded from a timm file (``--arch``)
gets its image files as timm gives them to it instead: resized and centre-cropped by its arch's preprocessing
(``npvit.interop.Preprocess``: bicubic, the shorter side to input / crop_pct), then normalised.

Before that, every Pillow mode becomes 8-bit RGB by its real range (:func:`to_rgb`): 16-bit greyscale is
scaled, not clipped (Pillow's own ``convert("RGB")`` clips 0..65535 to 0..255, turning a 16-bit PNG white),
32-bit integer and float images likewise, palettes are looked up, transparent pixels are laid on white,
CMYK is converted as R = 255 (1 - C)(1 - K) (and likewise G, B), and YCbCr, LAB and HSV go through Pillow's
colour conversions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import Backend, to_numpy
from ..checkpoint import RUN_CHECKPOINTS
from ..data.augment import resize_bilinear
from ..kernels import softmax_forward
from ..loading import LoadedModel, load
from ..settings import load_run_dataset
from ..zoo import DEFAULT, PREFIX, list_pretrained, pretrained_name
from .extras import pillow_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File endings picked up when a folder is given (any format Pillow reads works when named directly)."""
FITS = ("crop", "stretch")
MODEL_SUFFIXES = (".npz", ".safetensors", ".bin", ".pth", ".pt")
"""File endings of models (checkpoints, exports, timm and Google files): never taken for an image."""
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class InputError(Exception):
    """An image file or folder that cannot be used; the message names it and says why."""


def load_model(path: str | Path, backend: str | Backend = "numpy", arch: str | None = None) -> LoadedModel:
    """The trained model at ``path`` (a checkpoint file or run folder; with ``arch``, a timm or Google file),
    through :func:`npvit.load`."""
    return load(path, backend, arch=arch)


def is_model_source(text: str | None, arch: str | None = None) -> bool:
    """Whether a command's first argument names a model rather than an image: ``pretrained:NAME``, a run folder
    (a config.json or checkpoint in it), a file with a model's suffix (``.npz``, ``.safetensors``, ...); with
    ``arch``, any file."""
    if text is None:
        return False
    if arch is not None or pretrained_name(text) is not None:
        return True
    path = Path(text)
    if path.is_dir():
        return any((path / name).is_file() for name in (*RUN_CHECKPOINTS, "config.json"))
    return path.suffix.lower() in MODEL_SUFFIXES


def default_model(arch: str | None = None) -> str:
    """``pretrained:cifar10``, the model a command uses when given no checkpoint, saying so on stderr (stdout
    stays the command's: JSON, say); InputError when the package ships no such model or ``arch`` needs a file."""
    if arch is not None:
        raise InputError(f"--arch {arch} names the architecture of a timm or Google file: give the file first")
    if DEFAULT not in list_pretrained():
        raise InputError(f"no checkpoint given, and this installation ships no model {PREFIX}{DEFAULT}: name a run "
                         "folder or checkpoint first (e.g. runs/cifar10-fast)")
    print(f"no checkpoint given: using {PREFIX}{DEFAULT}, the model shipped with npvit", file=sys.stderr)
    return PREFIX + DEFAULT


def model_and_image(first: str | None, image: str | None, arch: str | None = None) -> tuple[str, str | None]:
    """(model, image) from a figure's optional CHECKPOINT and IMAGE arguments: a lone argument that is no model
    (:func:`is_model_source`) is the image, and the model is then :func:`default_model`."""
    if first is not None and (image is not None or is_model_source(first, arch)):
        return first, image
    return default_model(arch), first


def probabilities(logits: Any) -> np.ndarray:
    """Class probabilities of logits (B, K) of either backend: their softmax, on the host in float64."""
    return softmax_forward(to_numpy(logits).astype(np.float64), axis=-1)[0]


def image_files(paths: list[str | Path]) -> list[Path]:
    """Files named, with each folder replaced by its PNG/JPEG files (sorted by name, not recursive)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"{p} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"no such file or folder: {p}")
    return files


MAX_PIXELS = 64_000_000  # the default limit on an image's pixels: a large camera photo, not a decompression bomb


def read_image(path: str | Path, size: int, fit: str = "crop", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as uint8 (size, size, 3) RGB, reduced as the module docstring explains.

    EXIF orientation is applied (photos from phones), every mode is converted by its real range
    (:func:`to_rgb`), and transparent pixels are laid on white; more than ``max_pixels`` pixels are refused
    (:func:`open_rgb`).
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    image_mod = pillow_image()
    from PIL import ImageOps  # Pillow is there: pillow_image checked

    img = open_rgb(path, max_pixels)
    lanczos = image_mod.LANCZOS  # Image.Resampling.LANCZOS from Pillow 9.1; the constant works on every version
    if fit == "crop":
        img = ImageOps.fit(img, (size, size), method=lanczos)
    elif img.size != (size, size):
        img = img.resize((size, size), lanczos)
    return np.asarray(img, dtype=np.uint8).copy()


def model_image(loaded: LoadedModel, path: str | Path, fit: str = "crop",
                max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as the uint8 (native, native, 3) image ``loaded.model_input`` takes: reduced as the
    module docstring explains, or for a timm model resized and cropped by its preprocessing (``fit`` unused)."""
    if loaded.preprocess is None:
        return read_image(path, loaded.native_size, fit, max_pixels)
    return np.asarray(loaded.preprocess.resized(open_rgb(path, max_pixels)), dtype=np.uint8).copy()


def open_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Any:
    """An image file as an 8-bit RGB Pillow image at its own size (EXIF orientation applied, every mode
    converted by its real range). More than ``max_pixels`` pixels are refused from the header, before the
    image is decoded (121 megapixels of RGB are 1.4 GB in memory)."""
    image_mod = pillow_image()
    from PIL import ImageOps  # Pillow is there: pillow_image checked

    if not Path(path).is_file():
        raise InputError(f"no such file: {path}" if not Path(path).exists() else f"{path} is not a file")
    previous = image_mod.MAX_IMAGE_PIXELS
    image_mod.MAX_IMAGE_PIXELS = None  # the limit is max_pixels, checked below with a message that says how
    try:
        with image_mod.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(f"it is {width}x{height}, {width * height / 1e6:.1f} megapixels, more than the "
                                 f"limit of {max_pixels / 1e6:g}; reduce it, or raise the limit with --max-pixels "
                                 f"{width * height} if it is meant")
            img.load()
            img = to_rgb(ImageOps.exif_transpose(img))
    except InputError as exc:
        raise InputError(f"cannot use image {path}: {exc}") from None
    except (OSError, ValueError, SyntaxError, image_mod.DecompressionBombError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc
    finally:
        image_mod.MAX_IMAGE_PIXELS = previous
    return img


def value_range(mode: str, pixels: np.ndarray) -> tuple[float, float]:
    """The range a single-channel image of ``mode`` spans, mapped to 0..255:

    - 16-bit modes (I;16, I;16B, ...): 0..65535;
    - I (32-bit integers; what older Pillow makes of a 16-bit PNG): 0..65535 when every value lies there,
      else the image's own minimum..maximum;
    - F (32-bit floats): 0..1 when every value lies there (the usual convention for float images), else
      0..255 when every value lies there, else the image's own minimum..maximum.
    """
    lo, hi = float(pixels.min()), float(pixels.max())
    if mode in SIXTEEN_BIT or (mode == "I" and lo >= 0 and hi <= 65535):
        return 0.0, 65535.0
    if mode == "F" and lo >= 0 and hi <= 1:
        return 0.0, 1.0
    if mode == "F" and lo >= 0 and hi <= 255:
        return 0.0, 255.0
    # A constant image maps to 0; lo + 1 would equal lo from 2**53 on (float64), and divide by zero.
    return lo, hi if hi > lo else lo + max(1.0, abs(lo))


def to_rgb(img: Any) -> Any:
    """A Pillow image of any mode as an 8-bit "RGB" image, each mode by its real range (module docstring).

    Raises InputError for pixels that are not finite (NaN or infinity in a float image).
    """
    image_mod = pillow_image()
    mode = img.mode
    if mode in SIXTEEN_BIT or mode in ("I", "F"):
        pixels = np.asarray(img).astype(np.float64)
        if not np.isfinite(pixels).all():
            raise InputError(f"its {mode} pixels include NaN or infinity")
        lo, hi = value_range(mode, pixels)
        grey = np.clip(np.rint((pixels - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        return image_mod.fromarray(grey, "L").convert("RGB")
    if mode == "CMYK":  # the textbook conversion, the same on every Pillow version: R = (1 - C)(1 - K), ...
        cmyk = np.asarray(img).astype(np.float64) / 255.0
        rgb = 255.0 * (1.0 - cmyk[..., :3]) * (1.0 - cmyk[..., 3:])
        return image_mod.fromarray(np.rint(rgb).astype(np.uint8), "RGB")
    if mode in ALPHA or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return image_mod.alpha_composite(image_mod.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")  # RGB, L, 1, P, YCbCr, LAB, HSV, RGBX: Pillow's colour conversions


def dataset_image(loaded: LoadedModel, index: int, data_dir: str | None = None, cache_dir: str | None = None,
                  download: bool = True) -> tuple[np.ndarray, str]:
    """Test image ``index`` of the run's dataset (uint8, native size) and its class name. Without
    ``data_dir``, the copy the run was trained from is used when it is still there."""
    if not loaded.run:
        raise InputError(f"{loaded.path} records no dataset (a model from another library's file): give an image "
                         "file")
    recorded = loaded.run.get("data_dir")
    if data_dir is None and recorded and Path(recorded).exists():
        data_dir = recorded
    data = load_run_dataset(loaded.run, data_dir, cache_dir or loaded.run.get("cache_dir"), download=download,
                            progress=False)
    if not 0 <= index < len(data.x_test):
        raise InputError(f"--test-index {index} is outside the test split (0..{len(data.x_test) - 1})")
    return data.x_test[index], data.class_names[int(data.y_test[index])]


def display_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (h, w, 3) -> float (size, size, 3) in [0, 1]: the pixels the model sees, before normalisation
    (the same bilinear resize the Augmenter applies)."""
    x = resize_bilinear(np.asarray(image, dtype=np.float32)[None], size)[0]
    return np.clip(x / 255.0, 0.0, 1.0)
