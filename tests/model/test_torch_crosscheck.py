"""Cross-check npvit against an independent PyTorch implementation of the same Vision Transformer.

npvit's forward and backward passes are written by hand, so they can only be as right as their derivations.
The gradient check (finite differences) catches a backward that disagrees with its own forward, but not a
forward that computes the wrong network -- a transposed patch layout, heads split in the wrong order, GELU
missing after the last MLP layer -- nor an optimizer that follows the wrong formula.
``npvit.torch_reference`` rebuilds the network from plain torch modules and ops (written from the Keras ViT
example's description, not from npvit's kernels); this module copies npvit's weights into it and lets autograd
do the backward. In float64 with dropout off both sides must then agree to rounding error:

* logits, and the cross-entropy loss with and without label smoothing (``F.cross_entropy``);
* the gradient of every parameter and of the input images;
* the parameters after several AdamW steps (``torch.optim.AdamW``), with weight decay on all parameters,
  with ``exclude_from_decay`` (torch parameter groups), and with global-norm gradient clipping;

for every pooling ("flatten", "cls", "gap", and CCT's "seq") and GELU ("erf", "tanh"), for an image size that the
patch size does not divide (VALID padding drops the last pixels, which must get zero gradient), and for CCT's
convolutional tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: pip install 'npvit[torch]' to run the cross-check"
)
F = torch.nn.functional

import npvit  # noqa: E402  (after the skip: nothing below runs without torch)
from npvit.torch_reference import TorchViT  # noqa: E402
from key_bias import key_bias, zero_key_bias_grads  # noqa: E402

POOLS = ("flatten", "cls", "gap")
GELUS = ("erf", "tanh")
BATCH = 3
# Everything is float64, so the two implementations differ only by rounding (~1e-16 relative); 1e-9 leaves
# room for the different summation orders of matmuls and reductions yet catches any real discrepancy.
RTOL, ATOL = 1e-9, 1e-12


# ---- configurations and data -------------------------------------------------------------------------------
def make_config(pool: str, gelu: str, image_size: int = 12) -> npvit.ViTConfig:
    """A small but non-degenerate ViT: 9 patches, 2 blocks, key_dim * heads != dim, two head layers.

    Dropout is off: npvit's backward needs forward(training=True), and with rate 0 it draws no masks, so the
    training forward is the same deterministic function torch computes.
    """
    return replace(
        npvit.ViTConfig.tiny(num_classes=5),
        image_size=image_size, patch_size=4, channels=3, dim=8, depth=2, num_heads=2, key_dim=3,
        mlp_units=(12, 8), head_units=(16, 10), dropout=0.0, attention_dropout=0.0, head_dropout=0.0,
        pool=pool, gelu=gelu,
    )


def make_model(cfg: npvit.ViTConfig, seed: int = 0) -> npvit.ViT:
    """An npvit float64 model whose weights are perturbed away from their initial values.

    The initial biases, layer-norm shifts and class token are all zero and the layer-norm scales all one, so
    a bug in how one of them is used (a bias added in the wrong column order, gamma left out of a backward)
    would not show. Small random offsets make every parameter matter.
    """
    model = npvit.ViT(cfg, dtype="float64", seed=seed)
    rng = np.random.default_rng(seed + 100)
    for p in model.params.values():
        p += rng.normal(0.0, 0.1, size=p.shape)
    return model


def make_batch(cfg: npvit.ViTConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(BATCH, cfg.image_size, cfg.image_size, cfg.channels))
    labels = rng.integers(0, cfg.num_classes, size=BATCH)
    return images, labels


def torch_model(model: npvit.ViT) -> "TorchViT":
    """The torch reference network with a copy of npvit's parameters (copies: the two must not share memory)."""
    return TorchViT.from_npvit(model, dtype=torch.float64)


# ---- running both ------------------------------------------------------------------------------------------
def npvit_step(model: npvit.ViT, images: np.ndarray, labels: np.ndarray, smoothing: float = 0.0):
    """Training forward, loss and backward in npvit. Returns (logits, loss, d images); fills model.grads."""
    logits = model.forward(images, training=True)
    loss, cache = npvit.cross_entropy_forward(logits, labels, label_smoothing=smoothing)
    dimages = model.backward(npvit.cross_entropy_backward(cache))
    return logits, float(loss), dimages


def torch_step(tm: "TorchViT", images: np.ndarray, labels: np.ndarray, smoothing: float = 0.0):
    """The same in torch. Returns (logits, loss, d images); fills .grad of every parameter of ``tm``."""
    x = torch.tensor(images, dtype=torch.float64, requires_grad=True)
    logits = tm.train()(x)
    loss = F.cross_entropy(logits, torch.from_numpy(labels), label_smoothing=smoothing)
    loss.backward()
    return logits.detach().numpy(), loss.item(), x.grad.numpy()


def assert_close(actual, expected, what: str) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=RTOL, atol=ATOL, err_msg=what)


def assert_grads_match(model: npvit.ViT, tm: "TorchViT") -> None:
    t_grads = tm.npvit_state(grads=True)  # npvit names and layouts (dense kernels transposed back)
    assert set(model.grads) == set(t_grads), "npvit and the torch model must have the same parameters"
    for name, g in t_grads.items():
        # A None grad means the torch network never used the parameter: the two networks differ.
        assert g is not None, f"torch model does not use parameter {name}"
        assert_close(model.grads[name], g, f"gradient of {name}")


# ---- forward, loss and gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("gelu", GELUS)
@pytest.mark.parametrize("pool", POOLS)
def test_logits_and_loss_match_torch(pool: str, gelu: str) -> None:
    cfg = make_config(pool, gelu)
    model = make_model(cfg)
    images, labels = make_batch(cfg, seed=1)
    tm = torch_model(model)
    with torch.no_grad():
        expected = tm.eval()(torch.from_numpy(images))
    assert_close(model.forward(images), expected.numpy(), "logits (inference forward)")
    for smoothing in (0.0, 0.1):
        loss, _ = npvit.cross_entropy_forward(expected.numpy(), labels, label_smoothing=smoothing)
        ref = F.cross_entropy(expected, torch.from_numpy(labels), label_smoothing=smoothing)
        assert_close(loss, ref.item(), f"cross-entropy, label_smoothing={smoothing}")


@pytest.mark.parametrize("smoothing", (0.0, 0.1))
@pytest.mark.parametrize("gelu", GELUS)
@pytest.mark.parametrize("pool", POOLS)
def test_gradients_match_torch(pool: str, gelu: str, smoothing: float) -> None:
    cfg = make_config(pool, gelu)
    model = make_model(cfg)
    images, labels = make_batch(cfg, seed=2)
    tm = torch_model(model)
    logits, loss, dimages = npvit_step(model, images, labels, smoothing)
    t_logits, t_loss, t_dimages = torch_step(tm, images, labels, smoothing)
    assert_close(logits, t_logits, "logits (training forward)")
    assert_close(loss, t_loss, "loss")
    assert_grads_match(model, tm)
    assert_close(dimages, t_dimages, "gradient of the images")
    # Adding a constant to every key shifts each row of scores by the same amount, which softmax ignores: the
    # key bias gradient is zero in exact arithmetic, and only rounding noise (~1e-17) may be left of it.
    for i in range(cfg.depth):
        g = model.grads[f"blocks.{i}.attn.qkv.b"]
        assert np.abs(g[key_bias(cfg)]).max() <= 1e-12 * np.abs(g).max()


def assert_step_matches_torch(cfg: npvit.ViTConfig, model_seed: int, batch_seed: int) -> np.ndarray:
    """One training step's logits, loss and gradients (of every parameter and the images) against torch's;
    returns npvit's gradient of the images."""
    model = make_model(cfg, seed=model_seed)
    images, labels = make_batch(cfg, seed=batch_seed)
    tm = torch_model(model)
    logits, loss, dimages = npvit_step(model, images, labels)
    t_logits, t_loss, t_dimages = torch_step(tm, images, labels)
    assert_close(logits, t_logits, "logits")
    assert_close(loss, t_loss, "loss")
    assert_grads_match(model, tm)
    assert_close(dimages, t_dimages, "gradient of the images")
    return dimages


@pytest.mark.parametrize("pool", POOLS)
def test_valid_padding_matches_torch(pool: str) -> None:
    """14x14 images, 4x4 patches: a 3x3 grid, and the last 2 rows and columns of pixels are dropped."""
    cfg = make_config(pool, "erf", image_size=14)
    assert cfg.num_patches == 9
    dimages = assert_step_matches_torch(cfg, model_seed=3, batch_seed=4)
    # The dropped pixels do not reach the output, so their gradient must be exactly zero.
    assert not dimages[:, 12:].any() and not dimages[:, :, 12:].any()
    assert np.abs(dimages[:, :12, :12]).min() > 0


@pytest.mark.parametrize("overlap", [1, 2])
def test_overlapping_patches_match_torch(overlap: int) -> None:
    """Windows of 4 + 2 O pixels every 4 (F.pad and unfold on the torch side), on 14x14 images: the padding's
    and the dropped pixels' gradients are cut off."""
    cfg = replace(make_config("gap", "tanh", image_size=14), patch_overlap=overlap)
    assert cfg.num_patches == 9 and cfg.patch_dim == (4 + 2 * overlap) ** 2 * 3
    assert_step_matches_torch(cfg, model_seed=5, batch_seed=6)


@pytest.mark.parametrize("layout", [dict(arrangement="timm", pool="cls"),
                                    dict(arrangement="timm", pool="gap", class_token=True, fc_norm=True),
                                    dict(pool="gap", fc_norm=True)])
def test_timm_arrangement_and_fc_norm_match_torch(layout: dict) -> None:
    """No GELU after the block MLP's last layer, the final norm after the pooling, gap beside a class token."""
    assert_step_matches_torch(replace(make_config("cls", "erf"), **layout), model_seed=7, batch_seed=8)


@pytest.mark.parametrize("layout", [
    dict(conv_channels=(4, 6), pool="seq"),                            # projected 6 -> 8, sequence pooling
    dict(conv_channels=(5, 8), pool="seq", class_token=True, gelu="tanh"),  # no projection, a class token
    dict(conv_channels=(4,), pool="gap", image_size=13),              # 13 -> 7: an odd side
    dict(conv_channels=(3, 4, 8), pool="flatten", image_size=16),
])
def test_conv_tokenizer_and_sequence_pooling_match_torch(layout: dict) -> None:
    """CCT's parts: nn.Conv2d, ReLU and nn.MaxPool2d(3, 2, 1) on the torch side, the softmax over the tokens of
    a Linear(dim, 1) score; logits, loss and every gradient, the images' too."""
    cfg = replace(make_config("gap", "erf"), tokenizer="conv", **layout)
    dimages = assert_step_matches_torch(cfg, model_seed=9, batch_seed=10)
    assert np.abs(dimages).max() > 0


# ---- AdamW -------------------------------------------------------------------------------------------------
LR, WEIGHT_DECAY, EPS, STEPS = 1e-2, 0.05, 1e-8, 5
CLIP_NORM = 2.5  # within the range of this run's gradient norms (about 1.9 to 6.1): some steps clip, some not


def torch_clip_(P: dict, clip_norm: float) -> float:
    """Scale the gradients by clip_norm / ||g|| when ||g|| > clip_norm, as Keras (and npvit) do.

    torch.nn.utils.clip_grad_norm_ scales by max_norm / (||g|| + 1e-6) instead, which differs from the Keras
    formula by about 1e-6 / ||g|| relative -- far above the 1e-9 this test asserts -- so the torch side
    clips by hand with the exact Keras formula.
    """
    total = math.sqrt(sum(float((t.grad * t.grad).sum()) for t in P.values()))
    if total > clip_norm:
        for t in P.values():
            t.grad.mul_(clip_norm / total)
    return total


ADAMW_VARIANTS = {
    "decay_all": dict(exclude=False, clip_norm=None),
    "exclude_from_decay": dict(exclude=True, clip_norm=None),
    "clip_norm": dict(exclude=False, clip_norm=CLIP_NORM),
    "exclude_and_clip": dict(exclude=True, clip_norm=CLIP_NORM),
}


@pytest.mark.parametrize("variant", ADAMW_VARIANTS)
def test_adamw_training_matches_torch(variant: str) -> None:
    exclude, clip_norm = ADAMW_VARIANTS[variant]["exclude"], ADAMW_VARIANTS[variant]["clip_norm"]
    cfg = make_config("cls", "erf")
    model = make_model(cfg, seed=5)
    tm = torch_model(model)
    P = tm.npvit_parameters()  # npvit name -> torch Parameter (dense kernels stored transposed)
    no_decay = model.no_decay_names() if exclude else []
    opt = npvit.AdamW(
        model.params, lr=LR, weight_decay=WEIGHT_DECAY, epsilon=EPS, epsilon_convention="pytorch",
        decay_convention="keras", exclude_from_decay=no_decay, clip_norm=clip_norm,
    )
    groups = [
        {"params": [t for n, t in P.items() if n not in no_decay], "weight_decay": WEIGHT_DECAY},
        {"params": [t for n, t in P.items() if n in no_decay], "weight_decay": 0.0},
    ]
    t_opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=LR, eps=EPS, betas=(0.9, 0.999))

    clipped = 0
    for step in range(STEPS):
        images, labels = make_batch(cfg, seed=10 + step)  # a fresh batch each step, like real training
        npvit_step(model, images, labels)
        zero_key_bias_grads(cfg, model.grads)
        norm = opt.step(model.grads)
        t_opt.zero_grad()
        torch_step(tm, images, labels)
        with torch.no_grad():
            zero_key_bias_grads(cfg, {n: t.grad for n, t in P.items()})
        t_norm = torch_clip_(P, clip_norm) if clip_norm else None
        t_opt.step()
        if clip_norm:
            assert_close(norm, t_norm, f"global gradient norm at step {step + 1}")
            clipped += norm > clip_norm
        t_params = tm.npvit_state()
        for name in P:
            assert_close(model.params[name], t_params[name], f"{name} after step {step + 1}")
    if clip_norm:
        assert 0 < clipped < STEPS, f"clipping in {clipped} of {STEPS} steps: a branch went untested"
    if exclude:
        assert no_decay and len(no_decay) < len(P), "both parameter groups should be non-empty"


def test_the_peer_refuses_drop_path() -> None:
    """The PyTorch peer has no drop path: a config with it is refused rather than compared wrongly."""
    cfg = replace(npvit.ViTConfig.tiny(), drop_path=0.1)
    with pytest.raises(ValueError, match="drop path"):
        TorchViT(cfg)
