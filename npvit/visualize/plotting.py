"""Shared drawing helpers: new figures, tile mosaics, heat-map overlays and writing PNG files.

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg canvas directly, never through pyplot:
no GUI backend is selected, no global figure registry grows, and the pixel size of a file is exactly the
figure size in inches times the dpi. Many small tiles (patches, filters, similarity maps) are drawn as one
mosaic image with gaps rather than as hundreds of axes: faster, and crisp at any size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write
from .extras import matplotlib_figure, pillow_image
from .inputs import InputError

DEFAULT_DPI = 100
MAX_PIXELS = 50_000_000  # about 200 MB of RGBA while drawing; the largest figure at 600 dpi is half that


def new_figure(width: float, height: float) -> Any:
    """A blank Agg figure of ``width`` x ``height`` inches."""
    return matplotlib_figure().Figure(figsize=(width, height))


def render(fig: Any, dpi: float = DEFAULT_DPI) -> np.ndarray:
    """The figure drawn to uint8 RGB pixels (H, W, 3); InputError before drawing one of more than
    :data:`MAX_PIXELS` pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    width, height = (float(v) * dpi for v in fig.get_size_inches())
    if not width * height <= MAX_PIXELS:
        raise InputError(f"at {dpi:g} dpi the figure would be {width:,.0f}x{height:,.0f} pixels, more than "
                         f"{MAX_PIXELS / 1e6:.0f} million; use a lower --dpi")
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(fig: Any, path: str | Path, dpi: float = DEFAULT_DPI) -> tuple[int, int]:
    """Write the figure as an RGB PNG (optimised, so the figures in docs/ stay small). Returns (width, height)."""
    pixels = render(fig, dpi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pillow_image().fromarray(pixels)
    atomic_write(path, lambda f: image.save(f, format="PNG", optimize=True))  # never a half-written figure
    return pixels.shape[1], pixels.shape[0]


def mosaic(tiles: np.ndarray, columns: int, gap: int = 1, scale: int = 1, fill: float = np.nan) -> np.ndarray:
    """Lay tiles (n, h, w[, c]) out in a grid of ``columns``, each enlarged ``scale`` times (nearest) and
    separated by ``gap`` pixels of ``fill`` (NaN draws as the axes background, i.e. blank)."""
    tiles = np.asarray(tiles, dtype=np.float64)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w = tiles.shape[:3]
    rows = -(-n // columns)
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, *tiles.shape[3:]), fill)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    return out


def blank_nan(rgb: np.ndarray) -> np.ndarray:
    """An RGB mosaic with NaN gaps turned white (imshow has no "bad" colour for RGB arrays)."""
    return np.where(np.isnan(rgb), 1.0, rgb)


def show_image(ax: Any, image: np.ndarray, title: str | None = None, interpolation: str = "nearest") -> None:
    """An RGB image in [0, 1] with no ticks. Pixels stay sharp squares ("nearest"); mosaics with thin gaps
    pass "antialiased", so that gaps keep an even width when the figure has fewer pixels than the mosaic."""
    ax.imshow(np.clip(image, 0.0, 1.0), interpolation=interpolation)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def overlay(ax: Any, image: np.ndarray, heat: np.ndarray, title: str | None = None, alpha: float = 0.6,
            cmap: str = "inferno", from_zero: bool = True) -> Any:
    """``image`` (S, S, 3) in [0, 1] under a patch-grid heat map (gh, gw) stretched over it. Colours span
    0 to the map's own maximum (each panel shows where *its* attention goes, not how peaked it is), or with
    ``from_zero=False`` its minimum to its maximum (for maps that are nearly flat, such as rollouts).
    Returns the artist."""
    size = image.shape[0]
    show_image(ax, image, title)
    lo = 0.0 if from_zero else float(heat.min())
    span = float(heat.max()) - lo
    artist = ax.imshow((heat - lo) / span if span > 0 else heat * 0.0, cmap=cmap, alpha=alpha, vmin=0.0,
                       vmax=1.0, extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="nearest")
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    return artist


def mark_patch(ax: Any, row: int, col: int, patch_size: int, color: str = "cyan") -> None:
    """Outline patch (row, col) of the grid on an image axes."""
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((col * patch_size - 0.5, row * patch_size - 0.5), patch_size, patch_size,
                           fill=False, edgecolor=color, linewidth=1.2))
