"""npvit.export against the readers on the other side: timm loads the .safetensors export strictly, onnxruntime
runs the .onnx export to npvit's float32 logits (<= 1e-5 relative, every preset and arrangement, any batch) and
onnx.checker passes it, torch loads the .pt state dicts strictly; npvit reads its own exports back exactly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import npvit
from npvit import ViT, ViTConfig
from npvit.config import PRESETS
from npvit.interop import InteropError, MissingInteropExtra
from timm_models import measured, relative

ONNX = 1e-5


def perturbed(cfg: ViTConfig, dtype: str = "float32", seed: int = 0) -> ViT:
    model = ViT(cfg, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    for p in model.params.values():
        p += rng.standard_normal(p.shape).astype(p.dtype) * 0.02
    return model


def timm_config(global_pool: str = "token", **changes) -> ViTConfig:
    return dataclasses.replace(ViTConfig.timm("vit_tiny_patch16_224", image_size=32, global_pool=global_pool),
                               depth=2, **changes)


# Every preset but keras-wide, whose graph is keras' at width 256 (the same nodes) and whose 82M parameters take
# ten seconds to draw and export; every arrangement, pooling, GELU and patch layout npvit builds.
ONNX_CONFIGS = {
    **{preset: lambda p=preset: PRESETS[p]() for preset in PRESETS if preset != "keras-wide"},
    "timm-token": lambda: timm_config(),
    "timm-avg": lambda: timm_config("avg"),
    "timm-avg-no-class-token": lambda: dataclasses.replace(timm_config("avg"), class_token=False),
    "overlap-valid-padding": lambda: dataclasses.replace(ViTConfig.fast(), patch_overlap=2, image_size=30),
    "cls-tanh-head": lambda: dataclasses.replace(ViTConfig.tiny(), pool="cls", gelu="tanh", fc_norm=True),
    "conv-projected-seq-class-token": lambda: dataclasses.replace(
        ViTConfig.compact(), conv_channels=(16, 24), image_size=30, class_token=True, depth=2),
    "conv-gap-fc-norm": lambda: dataclasses.replace(ViTConfig.compact(), conv_channels=(64,), pool="gap",
                                                    fc_norm=True, depth=1),
}


@pytest.mark.parametrize("name", sorted(ONNX_CONFIGS))
def test_onnx_runs_in_onnxruntime_as_npvit(tmp_path: Path, name: str) -> None:
    onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install 'npvit[interop]'")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install onnxruntime")
    cfg = ONNX_CONFIGS[name]()
    model = perturbed(cfg)
    path = npvit.export(model, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert json.loads({p.key: p.value for p in proto.metadata_props}["npvit"])["config"] == cfg.to_dict()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch in (1, 3):  # the batch dimension is dynamic
        x = rng.standard_normal((batch, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)
        (logits,) = session.run(["logits"], {"images": x})
        assert logits.shape == (batch, cfg.num_classes)
        assert measured("ONNX in onnxruntime against npvit float32: logits", relative(logits, model.forward(x))) \
            <= ONNX


def test_timm_loads_the_safetensors_export_strictly(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm", reason="timm is not installed")
    pytest.importorskip("safetensors", reason="safetensors is not installed: pip install 'npvit[interop]'")
    from timm_models import timm_logits

    for global_pool in ("token", "avg"):
        model = perturbed(timm_config(global_pool))
        path = npvit.export(model, tmp_path / f"{global_pool}.safetensors")
        # load_pretrained is strict: a missing, unexpected or misshapen tensor is an error
        theirs = timm.create_model("vit_tiny_patch16_224", pretrained=True, img_size=32, depth=2,
                                   global_pool=global_pool, pretrained_cfg_overlay=dict(file=str(path)))
        again = npvit.load_timm(path, None, global_pool=global_pool, dtype="float64")  # the arch from the metadata
        for name, p in model.params.items():
            assert np.array_equal(again.params[name], p), name
        x = np.random.default_rng(0).standard_normal((2, 32, 32, 3))
        assert measured("npvit .safetensors export -> timm.create_model: logits, float64",
                        relative(again.forward(x), timm_logits(theirs, x))) <= 1e-10


@pytest.mark.parametrize("preset", ["tiny", "fast", "compact"])
def test_npvit_names_for_the_keras_arrangement_read_back_exactly(tmp_path: Path, preset: str) -> None:
    pytest.importorskip("safetensors", reason="safetensors is not installed: pip install 'npvit[interop]'")
    from safetensors import safe_open

    model = perturbed(PRESETS[preset]())
    path = npvit.export(model, tmp_path / "model.safetensors", class_names=[f"c{i}" for i in range(10)][
        :model.config.num_classes], normalization={"mean": [1.0, 2.0, 3.0], "variance": [4.0, 5.0, 6.0]})
    with safe_open(str(path), framework="numpy") as f:
        assert set(f.keys()) == set(model.params) and "npvit.timm_arch" not in f.metadata()
    loaded = npvit.load(path)
    assert loaded.config == model.config and loaded.class_names[0] == "c0"
    np.testing.assert_array_equal(loaded.augmenter.mean, [1.0, 2.0, 3.0])
    for name, p in model.params.items():
        assert np.array_equal(loaded.model.params[name], p), name


def test_pt_state_dicts_load_strictly(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from npvit.torch_reference import TorchViT

    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3))
    for cfg in (dataclasses.replace(ViTConfig.tiny(), pool="cls"),
                dataclasses.replace(ViTConfig.tiny(), tokenizer="conv", conv_channels=(4, 6), pool="seq")):
        model = perturbed(cfg, dtype="float64")
        state = torch.load(npvit.export(model, tmp_path / "keras.pt"), weights_only=True)
        peer = TorchViT(model.config, dtype=torch.float64)
        peer.load_state_dict(state, strict=True)
        with torch.no_grad():
            assert measured(".pt export -> TorchViT: logits, float64",
                            relative(model.forward(x), peer.eval()(torch.from_numpy(x)).numpy())) <= 1e-12
    timm = pytest.importorskip("timm", reason="timm is not installed")
    from timm_models import timm_logits

    model = perturbed(timm_config(), dtype="float64")
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2).double()
    theirs.load_state_dict(torch.load(npvit.export(model, tmp_path / "timm.pt"), weights_only=True), strict=True)
    x = x.repeat(4, 1).repeat(4, 2)  # 32x32
    assert measured(".pt export -> timm: logits, float64", relative(model.forward(x), timm_logits(theirs, x))) \
        <= 1e-10


def test_unknown_suffix_and_missing_extra_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = ViT(ViTConfig.tiny())
    with pytest.raises(InteropError, match=r"expected one of \.safetensors, \.onnx, \.pt"):
        npvit.export(model, tmp_path / "model.h5")
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # as if it were not installed
    with pytest.raises(MissingInteropExtra, match=r"pip install 'npvit\[interop\]'"):
        npvit.export(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
