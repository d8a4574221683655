"""Figures of a trained model: every figure renders to a PNG of the expected size, rollout math by hand, query
choices, attention from the engine on each backend, and clear errors (missing extra, bad query, no run)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from processes import run_python
from training_runs import TINY as ONE_EPOCH

pytest.importorskip("matplotlib")
PIL_Image = pytest.importorskip("PIL.Image")

from npvit.train import command as train_cli  # noqa: E402
from npvit.config import ViTConfig  # noqa: E402
from npvit.visualize import attention_rollout, query_weights  # noqa: E402
from npvit.visualize.__main__ import main as visualize  # noqa: E402
from npvit.visualize.attention import forward_with_attention, query_token  # noqa: E402
from npvit.visualize.filters import filter_tiles  # noqa: E402
from npvit.visualize.inputs import load_model  # noqa: E402
from npvit.visualize.patches import patch_tiles  # noqa: E402
from npvit.visualize.plotting import mosaic  # noqa: E402
from npvit.visualize.pos_embed import position_similarity  # noqa: E402

# The tiny preset with 2x2 patches (a 4x4 grid of 16 patches) on 16x16 synthetic images, two epochs: <1 s.
TINY = [*ONE_EPOCH, "--patch-size", "2", "--epochs", "2"]
DPI = 40
# Pixel sizes at DPI 40 of each figure of the tiny model (2 blocks of 2 heads, 4x4 grid, width 8): the
# figure sizes in inches the modules use, times 40.
SIZES = {
    "patches": (280, 296),       # 7.0 x 7.4 in
    "attention": (200, 140),     # max(2 heads * 1.3 + 0.5, 5.0) x (2 blocks * 1.3 + 0.9)
    "rollout": (360, 144),       # 9.0 x 3.6
    "pos-embed": (240, 208),     # 6.0 x 5.2
    "filters": (240, 268),       # 6.0 x (6.0 * 3 rows / 3 columns + 0.7): 8 filters
    "curves": (360, 256),        # 9.0 x 6.4
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for pool in ("flatten", "cls"):
        out[pool] = root / pool
        assert train_cli.main([*TINY, "--pool", pool, "--out", str(out[pool])]) == 0
    return out


def check_png(path: Path, size: tuple[int, int]) -> None:
    with PIL_Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode == "RGB"
        assert img.size == size
        img.load()
        assert np.asarray(img).std() > 0  # something was drawn


# ---- rollout math -----------------------------------------------------------------------------------------
def test_rollout_by_hand() -> None:
    # With the residual: Â = (A + I) / 2 (rows of A sum to 1), R = Â2 Â1.
    a1 = np.array([[1.0, 0.0], [0.5, 0.5]])  # Â1 = [[1, 0], [0.25, 0.75]]
    a2 = np.array([[0.5, 0.5], [0.0, 1.0]])  # Â2 = [[0.75, 0.25], [0, 1]]
    expected = np.array([[0.75 * 1 + 0.25 * 0.25, 0.25 * 0.75], [0.25, 0.75]])  # [[0.8125, 0.1875], [.25, .75]]
    np.testing.assert_allclose(attention_rollout([a1[None], a2[None]]), expected, atol=1e-15)
    # Heads are averaged first: two heads whose mean is a1 (and a2) give the same rollout; batches stay apart.
    h1 = np.stack([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    h2 = np.stack([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    batched = attention_rollout([np.stack([h1, h1])[:, :, :, :], np.stack([h2, h2])])
    assert batched.shape == (2, 2, 2)
    np.testing.assert_allclose(batched, np.stack([expected, expected]), atol=1e-15)
    # Without the residual it is the plain product of the fused maps.
    np.testing.assert_allclose(attention_rollout([a1[None], a2[None]], residual=False), a2 @ a1)
    np.testing.assert_allclose(attention_rollout([h1], head_fusion="max"),
                               (np.array([[1.0, 0.0], [1.0, 1.0]]) + np.eye(2)) / [[2.0], [3.0]])


def test_query_weights_by_hand() -> None:
    r = np.array([[0.4, 0.3, 0.3], [0.2, 0.6, 0.2], [0.0, 0.5, 0.5]])
    np.testing.assert_allclose(query_weights(r, None, cls_token=True), [0.5, 0.5])  # cls row, cls key dropped
    np.testing.assert_allclose(query_weights(r, 1, cls_token=True), [0.75, 0.25])
    np.testing.assert_allclose(query_weights(r, None, cls_token=False), r.mean(axis=0))  # mean over queries
    np.testing.assert_allclose(query_weights(r, 2, cls_token=False), r[2])
    with pytest.raises(ValueError, match="outside"):
        query_weights(r, 3, cls_token=False)


def test_rollout_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one block"):
        attention_rollout([])
    with pytest.raises(ValueError, match="differ in shape"):
        attention_rollout([np.ones((1, 2, 2)) / 2, np.ones((1, 3, 3)) / 3])
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([np.ones((1, 2, 2)) / 2], head_fusion="median")


# ---- the numbers behind the figures ---------------------------------------------------------------------------
def test_patch_tiles_put_back_together_give_the_image() -> None:
    image = np.arange(8 * 8 * 3, dtype=np.float64).reshape(8, 8, 3)
    tiles = patch_tiles(image, 4)
    assert tiles.shape == (4, 4, 4, 3)
    np.testing.assert_array_equal(tiles[1], image[:4, 4:])  # row-major: patch 1 is the top right one
    np.testing.assert_array_equal(mosaic(tiles, columns=2, gap=0), image)
    assert np.isnan(mosaic(tiles, columns=2, gap=1)[4]).all()  # the gap row


def test_similarity_and_filters(runs) -> None:
    loaded = load_model(runs["cls"])
    sim = position_similarity(loaded.param("pos_embed"), loaded.config)
    assert sim.shape == (16, 16)  # the class token's embedding is left out
    np.testing.assert_allclose(np.diag(sim), 1.0)
    w = loaded.param("patch_embed.proj.w")
    tiles, explained = filter_tiles(w, loaded.config)
    assert tiles.shape == (8, 2, 2, 3) and explained is None
    assert tiles.min() == 0.0 and tiles.max() == 1.0
    np.testing.assert_array_equal(tiles[3].reshape(-1) == 0.0, w[:, 3] == w[:, 3].min())
    tiles, explained = filter_tiles(w, loaded.config, pca=True)
    assert len(tiles) == 7  # 8 centred filters span at most 7 directions
    assert np.all(np.diff(explained) <= 1e-12) and explained.sum() == pytest.approx(1.0)


def test_attention_maps_come_from_the_engine(runs, backend) -> None:
    loaded = load_model(runs["flatten"], backend)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    maps, probs = forward_with_attention(loaded, image)
    assert len(maps) == 2 and all(type(m) is np.ndarray and m.shape == (2, 16, 16) for m in maps)
    np.testing.assert_allclose(sum(m.sum(axis=-1) for m in maps), 2.0, rtol=1e-5)
    assert probs.shape == (4,) and probs.sum() == pytest.approx(1.0)


def test_query_choices() -> None:
    flat = ViTConfig.tiny(num_classes=4)
    cls = dataclasses.replace(flat, pool="cls")
    assert query_token(flat, None) == 3  # centre patch (1, 1) of the 2x2 grid
    assert query_token(flat, None, rollout=True) is None  # mean over all queries
    assert query_token(cls, None) == 0 and query_token(cls, None, rollout=True) == 0
    assert query_token(cls, (1, 0)) == 3  # after the class token


# ---- the command line: every figure -------------------------------------------------------------------------
@pytest.mark.parametrize("figure,extra", [
    ("patches", ["--seed", "3"]), ("attention", []), ("rollout", []), ("pos-embed", []), ("filters", []),
    ("filters", ["--pca"]), ("curves", []),
])
def test_every_figure_renders(runs, tmp_path, capsys, figure, extra) -> None:
    out = tmp_path / f"{figure}.png"
    assert visualize([figure, str(runs["flatten"]), "--out", str(out), "--dpi", str(DPI), *extra]) == 0
    check_png(out, SIZES[figure])
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("figure,query", [("attention", None), ("attention", "3,0"), ("rollout", None),
                                          ("rollout", "cls"), ("rollout", "2,2"), ("pos-embed", None)])
def test_class_token_model(runs, tmp_path, figure, query) -> None:
    out = tmp_path / "fig.png"
    flags = ["--query", query] if query else []
    assert visualize([figure, str(runs["cls"] / "best.npz"), "--out", str(out), "--dpi", str(DPI), *flags]) == 0
    check_png(out, SIZES[figure])


def test_figures_of_an_image_file(runs, tmp_path) -> None:
    photo = tmp_path / "photo.jpg"  # larger and not square: reduced to 16x16 (centre crop) first
    rgb = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    PIL_Image.fromarray(rgb).save(photo)
    for figure in ("patches", "attention", "rollout"):
        out = tmp_path / f"{figure}.png"
        assert visualize([figure, str(runs["flatten"]), str(photo), "--query", "0,3", "--out", str(out),
                          "--dpi", str(DPI)] if figure != "patches" else
                         [figure, str(runs["flatten"]), str(photo), "--out", str(out), "--dpi", str(DPI)]) == 0
        check_png(out, SIZES[figure])


# ---- errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["attention", "{flatten}", "--query", "4,0"], "outside the 4x4 grid"),
    (["attention", "{flatten}", "--query", "cls"], "no class token"),
    (["attention", "{flatten}", "--query", "mean"], "rollout query"),
    (["attention", "{flatten}", "--test-index", "999"], "outside the test split"),
    (["rollout", "{flatten}", "{tmp}/missing.png"], "no such file"),
    (["rollout", "{flatten}", "{tmp}/notes.txt"], "cannot read image"),
    (["pos-embed", "{tmp}/missing.npz"], "no checkpoint at"),
    (["filters", "{tmp}"], "holds no checkpoint"),
    (["curves", "{tmp}"], "no metrics.jsonl"),
])
def test_clear_errors(runs, tmp_path, capsys, args, message) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    argv = [a.format(flatten=runs["flatten"], tmp=tmp_path) for a in args]
    assert visualize([*argv, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_bad_query_syntax_is_a_usage_error(runs, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        visualize(["attention", str(runs["flatten"]), "--query", "middle"])
    assert exc.value.code == 2 and "row,col" in capsys.readouterr().err


def test_missing_extra_names_it(runs, tmp_path, monkeypatch, capsys) -> None:
    for name in ("matplotlib", "matplotlib.figure", "PIL", "PIL.Image"):
        monkeypatch.setitem(sys.modules, name, None)  # makes "import name" fail
    assert visualize(["filters", str(runs["flatten"]), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: npvit.visualize needs matplotlib and Pillow: pip install 'npvit[viz]'")


def test_engine_never_imports_the_extra() -> None:
    code = ("import sys, npvit, npvit.train, npvit.evaluate, npvit.predict, npvit.visualize, "
            "npvit.visualize.__main__; bad = {'matplotlib', 'PIL'} & {m.split('.')[0] for m in sys.modules}; "
            "assert not bad, bad")
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
