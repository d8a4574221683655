"""ViTConfig: presets, derived sizes, validation and dict round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest

from npvit import ViTConfig


def test_keras_preset_is_the_2021_example() -> None:
    c = ViTConfig.keras()
    assert (c.image_size, c.patch_size, c.num_patches, c.patch_dim) == (72, 6, 144, 108)
    assert (c.dim, c.depth, c.num_heads, c.key_dim) == (64, 8, 4, 64)
    assert (c.mlp_units, c.head_units) == ((128, 64), (2048, 1024))
    assert (c.dropout, c.attention_dropout, c.head_dropout, c.ln_eps) == (0.1, 0.1, 0.5, 1e-6)
    assert (c.pool, c.gelu, c.num_classes) == ("flatten", "erf", 100)
    assert c.pooled_dim == 144 * 64
    assert c.attention_fans == "receptive"  # the 2021 example's Keras; "axes" is Keras 3.15 and later


def test_other_presets() -> None:
    wide = ViTConfig.keras_wide()
    assert (wide.dim, wide.mlp_units, wide.key_dim) == (256, (512, 256), 64)
    small = ViTConfig.small()
    assert (small.image_size, small.patch_size, small.num_patches, small.num_classes) == (32, 4, 64, 10)
    cls = dataclasses.replace(ViTConfig.tiny(), pool="cls")
    assert cls.num_tokens == cls.num_patches + 1 and cls.pooled_dim == cls.dim
    overlapping = dataclasses.replace(ViTConfig.fast(), patch_overlap=2)  # 8x8 windows every 4 pixels
    assert (overlapping.patch_window, overlapping.patch_dim, overlapping.num_patches) == (8, 192, 64)
    assert overlapping.num_params() == ViTConfig.fast().num_params() + (192 - 48) * 64
    recorded = ViTConfig.fast().to_dict()
    del recorded["patch_overlap"]  # a config.json written before the field existed
    assert ViTConfig.from_dict(recorded) == ViTConfig.fast()


def test_dict_round_trip_through_json() -> None:
    c = dataclasses.replace(ViTConfig.keras(), pool="gap", gelu="tanh")
    again = ViTConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c
    with pytest.raises(ValueError, match="unknown ViTConfig field"):
        ViTConfig.from_dict({"dimm": 3})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dim": 0}, "dim must be a positive integer"),
        ({"depth": 2.5}, "depth must be a positive integer"),
        ({"patch_size": 100}, "must not exceed image_size"),
        ({"patch_overlap": -1}, "patch_overlap must be a non-negative integer"),
        ({"patch_overlap": 1.5}, "patch_overlap must be a non-negative integer"),
        ({"mlp_units": (128, 32)}, "must end with dim"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"head_dropout": -0.1}, r"head_dropout must be in \[0, 1\)"),
        ({"pool": "max"}, "pool must be one of"),
        ({"gelu": "relu"}, "gelu must be one of"),
        ({"attention_fans": "fan_avg"}, "attention_fans must be one of"),
        ({"ln_eps": 0.0}, "ln_eps must be positive"),
        ({"arrangement": "paper"}, "arrangement must be one of"),
        ({"pool": "cls", "class_token": False}, "class_token cannot be false"),
        ({"class_token": "yes"}, "class_token must be true, false or null"),
        ({"fc_norm": True}, "fc_norm normalises one pooled token"),
        ({"fc_norm": 1}, "fc_norm must be true or false"),
    ],
)
def test_validation(change, message) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(ViTConfig.keras(), **change)


def test_timm_configs() -> None:
    """timm's sizes, and the parameter counts timm's own models have (sum of numel over model.parameters())."""
    base = ViTConfig.timm("vit_base_patch16_224")
    assert (base.dim, base.depth, base.num_heads, base.key_dim, base.mlp_units) == (768, 12, 12, 64, (3072, 768))
    assert (base.pool, base.has_class_token, base.fc_norm, base.arrangement) == ("cls", True, False, "timm")
    assert base.num_tokens == 197 and base.num_params() == 86_567_656
    assert ViTConfig.timm("vit_tiny_patch16_224").num_params() == 5_717_416
    assert ViTConfig.timm("vit_small_patch32_384", num_classes=10).num_tokens == 145
    assert ViTConfig.timm("vit_large_patch16_384").num_params() == 304_715_752
    avg = ViTConfig.timm("vit_tiny_patch16_224", global_pool="avg")
    assert (avg.pool, avg.has_class_token, avg.fc_norm) == ("gap", True, True)
    assert avg.num_params() == ViTConfig.timm("vit_tiny_patch16_224").num_params()
    assert ViTConfig.timm("vit_tiny_patch16_224", global_pool="avg", class_token=False).num_tokens == 196
    assert ViTConfig.timm("vit_tiny_patch16_224", image_size=64).num_patches == 16
    with pytest.raises(ValueError, match="unknown timm architecture 'vit_tiny_patch32_224'"):
        ViTConfig.timm("vit_tiny_patch32_224")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        ViTConfig.timm("vit_tiny_patch16_224", global_pool="max")
    with pytest.raises(ValueError, match="needs class_token=True"):
        ViTConfig.timm("vit_tiny_patch16_224", class_token=False)


def test_configs_written_before_the_timm_fields_still_load() -> None:
    for preset in (ViTConfig.keras(), dataclasses.replace(ViTConfig.tiny(), pool="cls")):
        recorded = preset.to_dict()
        for field in ("arrangement", "class_token", "fc_norm"):
            del recorded[field]
        assert ViTConfig.from_dict(recorded) == preset
    timm = ViTConfig.timm("vit_small_patch16_224", global_pool="avg")
    assert ViTConfig.from_dict(json.loads(json.dumps(timm.to_dict()))) == timm
