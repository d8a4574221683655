"""load_timm against timm's own VisionTransformer: logits in float64 (<= 1e-10 relative), the position embedding
resampled as timm resamples it, a new head, Google's .npz layout read back by timm's own reader, and the
gradients of one training step against torch autograd (<= 1e-9)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

timm = pytest.importorskip("timm", reason="timm is not installed: pip install timm (and safetensors) to run "
                                          "the bridge tests")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")
pytest.importorskip("safetensors", reason="safetensors is not installed: pip install 'npvit[interop]'")

import npvit  # noqa: E402
from npvit.interop.google_npz import timm_to_google  # noqa: E402
from npvit.interop.timm_names import to_timm  # noqa: E402
from timm_models import measured, random_timm, relative, save_safetensors, state_arrays, timm_logits  # noqa: E402

LOGITS = 1e-10
GRADIENTS = 1e-9
RESAMPLED = 1e-6

# (arch, timm's keyword arguments): small image sizes and 2 blocks keep each test to seconds
CASES = {
    "tiny16-token": ("vit_tiny_patch16_224", dict(img_size=32, depth=2)),
    "small32-384": ("vit_small_patch32_384", dict(img_size=96, depth=2)),
    "tiny16-avg": ("vit_tiny_patch16_224", dict(img_size=32, depth=2, global_pool="avg")),
    "tiny16-avg-no-class-token": ("vit_tiny_patch16_224", dict(img_size=48, depth=2, global_pool="avg",
                                                               class_token=False)),
}


def images(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3))


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_timm_in_float64(tmp_path: Path, case: str) -> None:
    arch, kwargs = CASES[case]
    tm = random_timm(arch, **kwargs)
    path = save_safetensors(tm, tmp_path / "model.safetensors")
    model = npvit.load_timm(path, arch, global_pool=kwargs.get("global_pool", "token"), dtype="float64")
    assert model.config.depth == 2 and model.config.image_size == kwargs["img_size"]
    assert model.config.has_class_token == kwargs.get("class_token", True)
    x = images(kwargs["img_size"])
    assert measured("timm .safetensors -> npvit: logits, float64", relative(model.forward(x), timm_logits(tm, x))) \
        <= LOGITS


def test_logits_match_timm_at_the_real_size() -> None:
    """vit_tiny_patch16_224 whole (12 blocks, 224x224, 197 tokens), from a mapping of timm's tensors."""
    tm = random_timm("vit_tiny_patch16_224")
    model = npvit.load_timm(tm.state_dict(), "vit_tiny_patch16_224", dtype="float64")
    assert (model.config.depth, model.config.num_tokens, model.num_params()) == (12, 197, 5_717_416)
    x = images(224)
    assert measured("timm -> npvit at 224x224, 12 blocks: logits, float64",
                    relative(model.forward(x), timm_logits(tm, x))) <= LOGITS


def test_float32_model_is_close(tmp_path: Path) -> None:
    arch, kwargs = CASES["tiny16-token"]
    tm = random_timm(arch, **kwargs)
    model = npvit.load_timm(save_safetensors(tm, tmp_path / "m.safetensors"), arch)
    assert model.dtype == np.float32
    x = images(32)
    assert measured("timm -> npvit float32: logits against timm's float64",
                    relative(model.forward(x.astype(np.float32)), timm_logits(tm, x))) <= 1e-5


def test_google_npz_layout_is_the_one_timm_reads(tmp_path: Path) -> None:
    """The .npz written from timm's weights in Google's layout, read by timm's own _load_weights into a fresh
    model, gives back the very tensors; load_timm reads the same file to timm's logits."""
    from timm.models.vision_transformer import _load_weights

    arch, kwargs = CASES["tiny16-token"]
    tm = random_timm(arch, **kwargs)
    cfg = dataclasses.replace(npvit.ViTConfig.timm(arch, image_size=32), depth=2)
    path = tmp_path / "ViT-Ti_16.npz"
    np.savez(path, **timm_to_google(state_arrays(tm), cfg))
    fresh = random_timm(arch, seed=9, **kwargs)
    _load_weights(fresh, str(path))
    for name, value in tm.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    model = npvit.load_timm(path, arch, dtype="float64")
    x = images(32)
    assert measured("Google .npz -> npvit: logits, float64", relative(model.forward(x), timm_logits(tm, x))) \
        <= LOGITS


def test_google_npz_with_the_training_prefix_and_a_pre_logits_layer(tmp_path: Path) -> None:
    arch, kwargs = CASES["tiny16-token"]
    tm = random_timm(arch, **kwargs)
    cfg = dataclasses.replace(npvit.ViTConfig.timm(arch, image_size=32), depth=2)
    arrays = {f"opt/target/{k}": v for k, v in timm_to_google(state_arrays(tm), cfg).items()}
    arrays["opt/target/pre_logits/kernel"] = np.ones((192, 192), np.float32)  # dropped, as timm drops it
    np.savez(tmp_path / "train.npz", **arrays)
    model = npvit.load_timm(tmp_path / "train.npz", arch, dtype="float64")
    x = images(32)
    assert relative(model.forward(x), timm_logits(tm, x)) <= LOGITS


@pytest.mark.parametrize("kind", ["safetensors", "npz"])
def test_resampled_position_embedding_is_timms(tmp_path: Path, kind: str) -> None:
    """Loaded at another image size: the position embedding as timm resamples it when it loads the same file
    into a model of that size (bicubic with antialiasing for timm's files, bilinear for Google's)."""
    from timm.models.vision_transformer import _load_weights

    arch, kwargs = CASES["tiny16-token"]
    tm = random_timm(arch, **kwargs)
    if kind == "safetensors":
        path = save_safetensors(tm, tmp_path / "m.safetensors")
        theirs = timm.create_model(arch, pretrained=True, img_size=64, depth=2,
                                   pretrained_cfg_overlay=dict(file=str(path))).eval()
    else:
        cfg = dataclasses.replace(npvit.ViTConfig.timm(arch, image_size=32), depth=2)
        path = tmp_path / "m.npz"
        np.savez(path, **timm_to_google(state_arrays(tm), cfg))
        theirs = timm.create_model(arch, pretrained=False, img_size=64, depth=2).eval()
        _load_weights(theirs, str(path))
    model = npvit.load_timm(path, arch, image_size=64, dtype="float64")
    assert model.config.num_tokens == 17
    pos = np.asarray(model.params["pos_embed"])
    expected = theirs.pos_embed.detach().double().numpy()[0]
    assert np.array_equal(pos[0], expected[0])  # the class position is kept as it is
    assert measured(f"resampled pos_embed ({kind}) against timm's (float32 inside)", relative(pos, expected)) <= 2e-6
    x = images(64)
    assert measured(f"resampled model ({kind}): logits against timm's", relative(model.forward(x),
                                                                               timm_logits(theirs, x))) <= RESAMPLED


def test_new_head_is_a_reset_classifier(tmp_path: Path) -> None:
    arch, kwargs = CASES["tiny16-token"]
    tm = random_timm(arch, **kwargs)
    path = save_safetensors(tm, tmp_path / "m.safetensors")
    model = npvit.load_timm(path, arch, num_classes=10, dtype="float64", seed=3)
    w, b = np.asarray(model.params["head.out.w"]), np.asarray(model.params["head.out.b"])
    bound = 1 / np.sqrt(192)
    assert w.shape == (192, 10) and np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(b).max() <= bound and b.std() > 0
    tm.double().reset_classifier(10)  # timm's own new head, given npvit's draw: then the logits are the same
    with torch.no_grad():
        tm.head.weight.copy_(torch.from_numpy(w.T))
        tm.head.bias.copy_(torch.from_numpy(b))
    x = images(32)
    assert relative(model.forward(x), timm_logits(tm, x)) <= LOGITS
    again = npvit.load_timm(path, arch, num_classes=10, dtype="float64", seed=3)
    assert np.array_equal(again.params["head.out.w"], model.params["head.out.w"])


@pytest.mark.parametrize("case", ["tiny16-token", "tiny16-avg"])
def test_gradients_of_one_step_match_torch_autograd(tmp_path: Path, case: str) -> None:
    """Cross-entropy with label smoothing, one backward: every parameter's gradient (in timm's names and
    layouts) and the images', against torch autograd through timm's model, float64."""
    arch, kwargs = CASES[case]
    tm = random_timm(arch, **kwargs).double()
    model = npvit.load_timm(tm.state_dict(), arch, global_pool=kwargs.get("global_pool", "token"), dtype="float64")
    x, labels = images(32, batch=3), np.array([0, 7, 999])
    logits = model.forward(x, training=True)
    _, cache = npvit.cross_entropy_forward(logits, labels, label_smoothing=0.1)
    dimages = model.backward(npvit.cross_entropy_backward(cache))

    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    tm.train()
    loss = torch.nn.functional.cross_entropy(tm(tx), torch.from_numpy(labels), label_smoothing=0.1)
    loss.backward()
    ours = to_timm(dict(model.grads.items()), model.config)
    theirs = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    assert set(ours) == set(theirs)
    for name, g in theirs.items():
        assert measured("gradients of one step against torch autograd", relative(ours[name], g)) <= GRADIENTS, name
    assert measured("gradients of one step against torch autograd",
                    relative(dimages, tx.grad.numpy().transpose(0, 2, 3, 1))) <= GRADIENTS


def test_preprocessing_comes_with_the_model(tmp_path: Path) -> None:
    arch, kwargs = CASES["small32-384"]
    model = npvit.load_timm(save_safetensors(random_timm(arch, **kwargs), tmp_path / "m.safetensors"), arch,
                            preprocess={"mean": (0.485, 0.456, 0.406)})
    pre = model.preprocess
    assert (pre.input_size, pre.interpolation, pre.crop_pct) == (96, "bicubic", 1.0)
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.5, 0.5, 0.5)
