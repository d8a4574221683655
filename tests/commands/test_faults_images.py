"""Image and metrics files that predict and visualize read, under faults: every Pillow mode read by its real
range, NaN pixels, a figure too large to draw, and metrics rows with numbers no float holds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fault_checks import PIL_Image, needs_matplotlib, needs_pillow, one_error_line

from npvit.visualize.inputs import InputError, read_image

pytestmark = pytest.mark.usefixtures("private_cache")  # no test touches the real dataset cache


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(np.rint(values), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


RAMP = np.arange(64, dtype=np.float64).reshape(8, 8) / 63.0  # 0 .. 1 across the image


@needs_pillow
@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I-16bit", "I-wide", "F-unit", "F-bytes", "F-wide", "P",
                                  "P-transparent", "RGBA", "LA", "1", "L", "CMYK", "YCbCr"])
def test_every_pillow_mode_is_read_by_its_real_range(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    if mode in ("I;16", "I;16B"):
        values = (RAMP * 65535).astype(np.uint16)
        img = PIL_Image.frombytes(mode, (8, 8), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
        expected, suffix = _grey(RAMP * 255), "png" if mode == "I;16" else "tif"
    elif mode == "I-16bit":
        img, expected, suffix = PIL_Image.fromarray((RAMP * 65535).astype(np.int32)), _grey(RAMP * 255), "tif"
    elif mode == "I-wide":  # beyond 16 bits: stretched from its minimum to its maximum
        img, expected, suffix = PIL_Image.fromarray((RAMP * 10**6 - 5000).astype(np.int32)), _grey(RAMP * 255), "tif"
    elif mode == "F-unit":
        img, expected, suffix = PIL_Image.fromarray(RAMP.astype(np.float32)), _grey(RAMP * 255), "tif"
    elif mode == "F-bytes":
        img, expected, suffix = PIL_Image.fromarray((RAMP * 200).astype(np.float32)), _grey(RAMP * 200), "tif"
    elif mode == "F-wide":
        img, expected, suffix = PIL_Image.fromarray((RAMP * 3000 - 7).astype(np.float32)), _grey(RAMP * 255), "tif"
    elif mode in ("P", "P-transparent"):
        palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
        index = rng.integers(0, 256, (8, 8)).astype(np.uint8)
        img = PIL_Image.fromarray(index, "P")
        img.putpalette(palette.reshape(-1).tolist())
        expected, suffix = palette[index], "png"
        if mode == "P-transparent":
            img.info["transparency"] = int(index[0, 0])
            expected = np.where((index == index[0, 0])[..., None], 255, expected).astype(np.uint8)
    elif mode in ("RGBA", "LA"):
        alpha = rng.integers(0, 256, (8, 8)).astype(np.float64)
        colour = rgb if mode == "RGBA" else np.repeat(rgb[..., :1], 3, axis=-1)
        layers = np.dstack([colour if mode == "RGBA" else colour[..., :1], alpha.astype(np.uint8)])
        img = PIL_Image.fromarray(layers, mode)
        a = alpha[..., None] / 255
        expected, suffix = np.rint(colour * a + 255 * (1 - a)).astype(np.uint8), "png"
    elif mode == "1":
        bits = rng.integers(0, 2, (8, 8)).astype(bool)
        img, expected, suffix = PIL_Image.fromarray(bits), _grey(bits * 255.0), "png"
    elif mode == "L":
        img, expected, suffix = PIL_Image.fromarray(rgb[..., 0]), _grey(rgb[..., 0]), "png"
    elif mode == "CMYK":
        cmyk = rng.integers(0, 128, (8, 8, 4)).astype(np.uint8)
        img = PIL_Image.fromarray(cmyk, "CMYK")
        expected = np.rint((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:].astype(float)) / 255).astype(np.uint8)
        suffix = "tif"
    else:  # YCbCr, by the JPEG (ITU-R BT.601 full range) formulas
        ycc = rng.integers(60, 196, (8, 8, 3)).astype(np.float64)
        img = PIL_Image.fromarray(ycc.astype(np.uint8), "YCbCr")
        y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
        expected = np.clip(np.rint(np.dstack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr,
                                              y + 1.772 * cb])), 0, 255).astype(np.uint8)
        suffix = "tif"
    path = tmp_path / f"image.{suffix}"
    img.save(path)
    with PIL_Image.open(path) as check:  # the file really is in the mode under test
        assert check.mode == {"I-16bit": "I", "I-wide": "I", "F-unit": "F", "F-bytes": "F", "F-wide": "F",
                              "P-transparent": "P"}.get(mode, mode)
    got = read_image(path, 8, fit="stretch")  # the file's own size: no resize, the conversion alone
    tolerance = 2 if mode == "YCbCr" else 1 if mode in ("RGBA", "LA") else 0
    np.testing.assert_allclose(got.astype(int), expected.astype(int), atol=tolerance, err_msg=mode)


@needs_pillow
def test_nan_pixels_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nan.tif"
    PIL_Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32)).save(path)
    with pytest.raises(InputError, match="cannot use image .*nan.tif: its F pixels include NaN"):
        read_image(path, 4)


@needs_matplotlib
def test_predict_and_visualize_see_a_16_bit_png_as_its_8_bit_twin(run: Path, tmp_path: Path, capsys) -> None:
    from npvit import predict as predict_cli
    from npvit.visualize.__main__ import main as visualize

    ramp = np.add.outer(np.arange(16), np.arange(16)) / 30.0
    deep, flat = tmp_path / "deep.png", tmp_path / "flat.png"
    PIL_Image.fromarray(np.rint(ramp * 65535).astype(np.uint16)).save(deep)
    PIL_Image.fromarray(np.rint(ramp * 255).astype(np.uint8)).save(flat)
    with PIL_Image.open(deep) as img:
        assert img.mode == "I;16" and np.asarray(img.convert("RGB")).min() == 0  # Pillow alone: clipped...
        assert (np.asarray(img.convert("RGB")) == 255).mean() > 0.9  # ... to an almost white image
    assert predict_cli.main([str(run), str(deep), str(flat), "--json"]) == 0
    deep_result, flat_result = json.loads(capsys.readouterr().out)
    assert deep_result["predictions"] == flat_result["predictions"]
    for name in ("deep", "flat"):
        assert visualize(["patches", str(run), str(tmp_path / f"{name}.png"), "--title", "same", "--dpi", "30",
                          "--out", str(tmp_path / f"fig-{name}.png")]) == 0
    assert (tmp_path / "fig-deep.png").read_bytes() == (tmp_path / "fig-flat.png").read_bytes()



@needs_matplotlib
def test_a_figure_too_large_to_draw_is_refused_before_drawing(run: Path, tmp_path: Path, capsys) -> None:
    from npvit.visualize.__main__ import main as visualize
    from npvit.visualize.plotting import MAX_PIXELS

    out = tmp_path / "f.png"
    assert visualize(["curves", str(run), "--dpi", "1200", "--out", str(out)]) == 2  # 10800 x 7680 pixels
    one_error_line(capsys.readouterr().err, f"more than {MAX_PIXELS // 10**6} million; use a lower --dpi")
    assert not out.exists() and list(tmp_path.iterdir()) == []



def test_metrics_rows_with_numbers_no_float_holds_are_refused(tmp_path) -> None:
    from npvit.visualize.curves import read_run_metrics

    row = {"epoch": 1, "step": 4, "train_loss": 1.5, "val_loss": math.nan}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    (kept,), _ = read_run_metrics(tmp_path)
    assert kept["train_loss"] == 1.5 and math.isnan(kept["val_loss"])  # NaN is kept: the figure leaves it out
    (tmp_path / "metrics.jsonl").write_text(json.dumps(dict(row, train_loss=10**400)) + "\n")
    with pytest.raises(InputError, match="line 1, is not a row npvit.train writes"):
        read_run_metrics(tmp_path)
