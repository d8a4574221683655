"""What comes with a pretrained model: timm's preprocessing (against timm's own transform), the arch table and
ImageNet's class names (against timm's), and the position-embedding resampling (against torch and timm)."""

from __future__ import annotations

import numpy as np
import pytest

from npvit.config import TIMM_ARCHS
from npvit.interop import InteropError, Preprocess, imagenet_class_names, resample_pos_embed
from npvit.interop.preprocess import pretrained_table
from npvit.interop.resample import antialiased_bicubic_weights, bilinear_weights

timm = pytest.importorskip("timm", reason="timm is not installed: pip install timm")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")
Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed: pip install 'npvit[viz]'")


def test_the_shipped_table_is_timms_pretrained_config() -> None:
    from timm.models import get_pretrained_cfg

    table = pretrained_table()
    assert sorted(table) == sorted(TIMM_ARCHS)
    for arch, mine in table.items():
        theirs = get_pretrained_cfg(arch).to_dict()
        assert mine["tag"] == theirs["tag"] and mine["input_size"] == theirs["input_size"][1], arch
        for key in ("interpolation", "crop_pct", "crop_mode", "num_classes"):
            assert mine[key] == theirs[key], (arch, key)
        assert tuple(mine["mean"]) == tuple(theirs["mean"]) and tuple(mine["std"]) == tuple(theirs["std"])


def test_imagenet_class_names_are_timms() -> None:
    from timm.data import ImageNetInfo

    info, names = ImageNetInfo(), imagenet_class_names()
    assert len(names) == 1000
    assert all(names[i] == info.index_to_description(i) for i in range(1000))


@pytest.mark.parametrize("arch", ["vit_base_patch16_224", "vit_small_patch32_384"])
@pytest.mark.parametrize("size", [(300, 200), (150, 400), (224, 224), (257, 256)])
def test_preprocessing_is_timms_eval_transform(arch: str, size: tuple[int, int]) -> None:
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(arch, pretrained=False, depth=1)
    transform = create_transform(**resolve_data_config({}, model=model))
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    expected = transform(image).numpy().transpose(1, 2, 0)  # CHW -> HWC
    mine = Preprocess.for_arch(arch)(image)
    assert mine.shape == expected.shape and mine.dtype == np.float32
    from timm_models import measured

    assert measured("preprocessing against timm's eval transform (absolute)", np.abs(mine - expected).max()) <= 1e-6
    np.testing.assert_array_equal(Preprocess.for_arch(arch)(pixels), mine)  # a uint8 array, the same


def test_preprocessing_overrides_and_bad_values() -> None:
    pre = Preprocess.for_arch("vit_tiny_patch16_224", 64, crop_pct=1.0)
    assert (pre.input_size, pre.crop_pct, pre.mean) == (64, 1.0, (0.5, 0.5, 0.5))
    assert Preprocess.from_dict(pre.to_dict()) == pre
    with pytest.raises(InteropError, match="unknown preprocessing field"):
        Preprocess.for_arch("vit_tiny_patch16_224", colour="red")
    with pytest.raises(InteropError, match="crop_pct must be in"):
        Preprocess(32, crop_pct=1.5)
    with pytest.raises(InteropError, match="uint8"):
        pre(np.zeros((8, 8, 3), np.float32))


@pytest.mark.parametrize("old, new", [(14, 24), (24, 14), (7, 4), (2, 5), (12, 5)])
@pytest.mark.parametrize("interpolation, antialias", [("bicubic", True), ("bilinear", False)])
def test_resampling_is_torchs_interpolate(old: int, new: int, interpolation: str, antialias: bool) -> None:
    """The very weights of F.interpolate (as timm calls it), run in float64; timm's own function, which works
    in float32, to its rounding."""
    from timm.layers import resample_abs_pos_embed

    pos = np.random.default_rng(old * new).standard_normal((1 + old * old, 6))
    mine = resample_pos_embed(pos, new, 1, interpolation)
    grid = torch.from_numpy(pos[1:].reshape(1, old, old, 6)).permute(0, 3, 1, 2)
    exact = torch.nn.functional.interpolate(grid, size=(new, new), mode=interpolation, antialias=antialias)
    exact = exact.permute(0, 2, 3, 1).reshape(-1, 6).numpy()
    assert np.array_equal(mine[0], pos[0])  # the class position, kept
    assert np.abs(mine[1:] - exact).max() <= 1e-13 * np.abs(exact).max()
    theirs = resample_abs_pos_embed(torch.from_numpy(pos.astype(np.float32)[None]), (new, new),
                                    num_prefix_tokens=1, interpolation=interpolation, antialias=antialias)[0]
    float32_input = resample_pos_embed(pos.astype(np.float32).astype(np.float64), new, 1, interpolation)
    assert np.abs(float32_input - theirs.double().numpy()).max() <= 2e-6 * np.abs(exact).max()


def test_interpolation_weights_sum_to_one() -> None:
    for make in (antialiased_bicubic_weights, bilinear_weights):
        for a, b in ((3, 9), (9, 3), (14, 24), (5, 5)):
            assert np.allclose(make(a, b).sum(axis=1), 1.0)
    assert np.allclose(bilinear_weights(5, 5), np.eye(5)) and np.allclose(antialiased_bicubic_weights(5, 5), np.eye(5))
