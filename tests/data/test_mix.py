"""Mixup and CutMix (npvit.data.mix) and the soft-target loss (npvit.kernels.soft_cross_entropy): against a per-image
reference of timm's ``Mixup(mode="elem")``, keyed per image so that slices and ranks mix as one process does,
off (alpha 0) exactly as before, and from the command line."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from npvit import gradcheck
from npvit.train import command as train_cli
from npvit.data.augment import Augmenter
from npvit.backend import get_backend, to_numpy
from npvit.checkpoint import load_checkpoint
from npvit.config import ViTConfig
from npvit.distributed import SingleProcess, rank_slice
from npvit.kernels import (
    cross_entropy_backward,
    cross_entropy_forward,
    soft_cross_entropy_backward,
    soft_cross_entropy_forward,
)
from npvit.data.mix import MixDraws, draw_mix, mix_images, mix_targets
from npvit.data.device import DeviceDataset
from npvit.train.step import AUGMENT, DROPOUT, StepSettings, mix_slice, stream_seed
from training_runs import assert_thread_ranks_train_what_one_process_trains, toy_model, train_toy


# ---- the reference: timm's elem mode, one image at a time ----------------------------------------------------
def replay_draws(total: int, mixup: float, cutmix: float, seed: int) -> dict[str, np.ndarray]:
    """The raw draws of npvit.data.mix's documented order, replayed from a fresh NumPy generator."""
    rng = np.random.default_rng(seed)
    both = mixup > 0 and cutmix > 0
    use_cutmix = rng.random(total) < 0.5 if both else np.full(total, cutmix > 0)
    lam_cut = rng.beta(cutmix, cutmix, total) if cutmix > 0 else None
    lam_mix = rng.beta(mixup, mixup, total) if mixup > 0 else None
    uy = rng.random(total) if cutmix > 0 else None
    ux = rng.random(total) if cutmix > 0 else None
    return {"use_cutmix": use_cutmix, "lam_cut": lam_cut, "lam_mix": lam_mix, "uy": uy, "ux": ux}


def reference_mix(images: np.ndarray, labels: np.ndarray, raw: dict, num_classes: int, smoothing: float):
    """timm's ``Mixup._mix_elem`` and ``mixup_target`` image by image (x_orig: the batch before mixing;
    rand_bbox and the lam correction on Python and NumPy scalars), from the replayed draws."""
    total, h, w, _ = images.shape
    out = images.copy()
    lams, targets = [], []
    for i in range(total):
        j = total - i - 1
        if raw["use_cutmix"][i]:
            lam = float(raw["lam_cut"][i])
            cy, cx = min(int(raw["uy"][i] * h), h - 1), min(int(raw["ux"][i] * w), w - 1)
            ratio = np.sqrt(1 - lam)
            cut_h, cut_w = int(h * ratio), int(w * ratio)
            yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
            xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
            out[i, yl:yh, xl:xh] = images[j, yl:yh, xl:xh]
            lam = 1.0 - (yh - yl) * (xh - xl) / float(h * w)
        else:
            lam = float(raw["lam_mix"][i])
            out[i] = images[i] * images.dtype.type(lam) + images[j] * images.dtype.type(1 - lam)
        off = smoothing / num_classes
        on = 1.0 - smoothing + off
        row = [lam * (on if k == labels[i] else off) + (1 - lam) * (on if k == labels[j] else off)
               for k in range(num_classes)]
        lams.append(lam)
        targets.append(row)
    return out, np.array(lams), np.array(targets)


ALPHAS = [(0.8, 1.0), (0.4, 0.0), (0.0, 1.0), (0.2, 0.3)]


@pytest.mark.parametrize("mixup,cutmix", ALPHAS)
@pytest.mark.parametrize("total,dtype", [(8, "float32"), (7, "float64")])  # an odd batch: the middle image alone
def test_mixing_equals_a_per_image_reference_of_timm(backend, mixup, cutmix, total, dtype) -> None:
    h, w, k, smoothing = 6, 9, 5, 0.1  # not square: rows and columns cannot be swapped unnoticed
    data = np.random.default_rng(total)
    images = data.standard_normal((total, h, w, 3)).astype(dtype)
    labels = data.integers(0, k, total)
    draws = draw_mix(total, h, w, mixup, cutmix, np.random.default_rng(11), backend.xp)
    mixed = mix_images(backend.asarray(images), backend.asarray(images[::-1]), draws)
    targets = mix_targets(backend.asarray(labels), backend.asarray(labels[::-1]), draws.lam, k, smoothing, "float64")
    expected, lams, expected_targets = reference_mix(images, labels, replay_draws(total, mixup, cutmix, 11), k,
                                                      smoothing)
    assert mixed.dtype == images.dtype
    np.testing.assert_array_equal(to_numpy(draws.lam), lams)
    np.testing.assert_array_equal(to_numpy(mixed), expected)
    np.testing.assert_allclose(to_numpy(targets), expected_targets, rtol=1e-15, atol=1e-16)
    np.testing.assert_allclose(to_numpy(targets).sum(axis=1), 1.0, rtol=1e-15)
    kinds = to_numpy(draws.use_cutmix)
    if mixup == 0 or cutmix == 0:  # one kind only
        assert (kinds == (cutmix > 0)).all()
    changed = (to_numpy(mixed) != images).any(axis=(1, 2, 3))
    assert changed.sum() >= total // 2  # the test mixes something (the middle image of an odd batch cannot)


def test_draws_follow_their_distributions() -> None:
    total, h, w = 4000, 8, 12
    d = draw_mix(total, h, w, 1.0, 1.0, np.random.default_rng(0))
    cut = d.use_cutmix
    assert 0.46 < cut.mean() < 0.54  # timm's switch_prob 0.5
    assert ((d.lam >= 0) & (d.lam <= 1)).all()
    area = (d.y1 - d.y0) * (d.x1 - d.x0)
    np.testing.assert_array_equal(d.lam[cut], 1.0 - area[cut] / (h * w))  # corrected to the pasted area
    assert (area[~cut] == 0).all()  # Mixup rows paste nothing
    assert ((0 <= d.y0) & (d.y0 <= d.y1) & (d.y1 <= h) & (0 <= d.x0) & (d.x0 <= d.x1) & (d.x1 <= w)).all()
    assert abs(d.lam[~cut].mean() - 0.5) < 0.03  # Beta(1, 1) is uniform: mean 1/2
    # Boxes are centred uniformly: some touch each border, and clipped boxes make lam above the uncorrected.
    assert (d.y0[cut] == 0).mean() > 0.2 and (d.x1[cut] == w).mean() > 0.2
    small = draw_mix(total, h, w, 0.2, 0.0, np.random.default_rng(1))
    assert (np.minimum(small.lam, 1 - small.lam) < 0.1).mean() > 0.5  # Beta(0.2, 0.2) piles up near 0 and 1


def test_draws_are_keyed_per_row() -> None:
    """Rows of one draw: a slice, or any rows, of the batch's draws; mixing a slice with its partners gives the
    slice of the whole batch's mixed images."""
    total, h, w = 9, 5, 7
    images = np.random.default_rng(2).standard_normal((total, h, w, 3))
    draws = draw_mix(total, h, w, 0.8, 1.0, np.random.default_rng(4))
    whole = mix_images(images, images[::-1], draws)
    for part in (slice(0, 4), slice(4, 9), slice(3, 6)):
        partners = images[total - part.stop:total - part.start][::-1]
        np.testing.assert_array_equal(mix_images(images[part], partners, draws.rows(part)), whole[part])
    again = draw_mix(total, h, w, 0.8, 1.0, np.random.default_rng(4))
    for field in dataclasses.fields(MixDraws):
        np.testing.assert_array_equal(getattr(again, field.name), getattr(draws, field.name))
    rows = np.array([7, 0, 3])
    np.testing.assert_array_equal(draws.rows(rows).lam, draws.lam[rows])


# ---- the train step: slices and ranks mix as one process --------------------------------------------------------
def _augmenter() -> Augmenter:
    return Augmenter(np.full(3, 120.0), np.full(3, 3000.0), image_size=8, flip=True, rotation=0.05, zoom=0.2,
                     crop_padding=2, dtype="float64")


@pytest.mark.parametrize("total", [8, 9])
def test_every_slice_mixes_what_the_whole_batch_mixes(total) -> None:
    """mix_slice on any rank's slice (partners from another rank's rows, augmented here with their own draws)
    equals the rows of the whole batch mixed in one process (partners: the augmented batch reversed)."""
    data = np.random.default_rng(3)
    x = data.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    y = data.integers(0, 4, 20)
    batch = data.permutation(20)[:total]
    settings = StepSettings(seed=5, label_smoothing=0.1, mixup=0.8, cutmix=1.0)
    backend = get_backend("numpy")
    augmenter = _augmenter()

    def mixed(part: slice):
        images = augmenter(x[batch[part]], training=True, rng=backend.rng(stream_seed(5, AUGMENT, 2)),
                           first=part.start, total=total)
        return mix_slice(augmenter, DeviceDataset(backend, x, y), batch, part, images, y[batch[part]], 2, settings, 4, backend)

    whole_images, whole_targets = mixed(slice(0, total))  # the shortcut: partners are the batch reversed
    for size in (2, 3, 4):
        parts = [rank_slice(total, r, size) for r in range(size)]
        for part in parts:
            images, targets = mixed(part)
            np.testing.assert_array_equal(images, whole_images[part])
            np.testing.assert_array_equal(targets, whole_targets[part])
    symmetric = slice(2, total - 2)  # its own partners: the shortcut inside a bigger batch
    np.testing.assert_array_equal(mixed(symmetric)[0], whole_images[symmetric])
    unmixed = augmenter(x[batch], training=True, rng=backend.rng(stream_seed(5, AUGMENT, 2)), total=total)
    assert (whole_images != unmixed).any(axis=(1, 2, 3)).sum() >= total - 1


def _setup(dropout: float = 0.1):
    """The tiny model, its AdamW, the augmenter and 40 images with labels, the same at every call."""
    cfg = dataclasses.replace(ViTConfig.tiny(num_classes=4), dropout=dropout)
    data = np.random.default_rng(0)
    x = data.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    y = data.integers(0, 4, 40).astype(np.int64)
    model, opt = toy_model(cfg)
    return model, opt, _augmenter(), x, y


def _train(comm, batches, settings: StepSettings, dropout: float = 0.1):
    model, opt, augmenter, x, y = _setup(dropout)
    return train_toy(comm, model, opt, augmenter, x, y, batches, settings)


@pytest.mark.parametrize("size", [2, 3])
def test_ranks_with_mixing_train_the_model_one_process_trains(size) -> None:
    batches = [np.random.default_rng(1).permutation(40)[:16], np.arange(9), np.array([5])]
    settings = StepSettings(seed=0, label_smoothing=0.1, mixup=0.8, cutmix=1.0)
    single_params, single_sums = assert_thread_ranks_train_what_one_process_trains(
        lambda comm: _train(comm, batches, settings), size)
    unmixed_params, unmixed_sums = _train(SingleProcess(), batches, StepSettings(seed=0, label_smoothing=0.1))
    assert abs(unmixed_sums[0] - single_sums[0]) > 1e-3  # mixing changed the losses, and so the weights
    assert not np.allclose(unmixed_params.flat, single_params.flat)


def test_alpha_zero_is_the_step_without_mixing_bit_for_bit() -> None:
    """Both alphas 0: the step of before, written out here (augment, forward, cross-entropy, backward, AdamW),
    gives the very same weights; no mixing stream is drawn."""
    batches = [np.random.default_rng(1).permutation(40)[:16], np.arange(9)]
    got, got_sums = _train(SingleProcess(), batches, StepSettings(seed=0, label_smoothing=0.1, mixup=0.0,
                                                                    cutmix=0.0))
    model, opt, augmenter, x, y = _setup(dropout=0.1)
    loss_sum = 0.0
    for step, batch in enumerate(batches):
        images = augmenter(x[batch], training=True, rng=model.backend.rng(stream_seed(0, AUGMENT, step)))
        logits = model.forward(images, training=True, dropout_seed=stream_seed(0, DROPOUT, step))
        loss, cache = cross_entropy_forward(logits, y[batch], 0.1)
        model.backward(cross_entropy_backward(cache))
        opt.step(model.grads)
        loss_sum += float(loss) * len(batch)
    assert np.array_equal(model.params.flat, got.flat)
    assert loss_sum == got_sums[0]


def test_negative_or_non_finite_alphas_are_refused() -> None:
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="mixup alpha must be a finite number >= 0"):
            StepSettings(seed=0, mixup=bad)
        with pytest.raises(ValueError, match="cutmix alpha must be a finite number >= 0"):
            draw_mix(4, 8, 8, 0.5, bad, np.random.default_rng(0))
    with pytest.raises(ValueError, match="mixup or cutmix alpha > 0"):
        draw_mix(4, 8, 8, 0.0, 0.0, np.random.default_rng(0))
    d = draw_mix(4, 8, 8, 0.5, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="float images"):
        mix_images(np.zeros((4, 8, 8, 3), dtype=np.uint8), np.zeros((4, 8, 8, 3), dtype=np.uint8), d)
    with pytest.raises(ValueError, match="draws of 3 images"):
        mix_images(np.zeros((3, 8, 8, 3)), np.zeros((3, 8, 8, 3)), d)


# ---- the command line ----------------------------------------------------------------------------------------
FLAGS = ["--dataset", "synthetic", "--synthetic-size", "64,16", "--synthetic-image-size", "8",
         "--synthetic-classes", "4", "--preset", "tiny", "--batch-size", "16", "--max-steps", "2", "--threads", "1",
         "--quiet"]


def test_mixup_and_cutmix_flags_train(tmp_path, capsys) -> None:
    runs = {"plain": [], "zero": ["--mixup", "0", "--cutmix", "0"], "mixup": ["--mixup", "0.8"],
            "cutmix": ["--cutmix", "1.0"], "both": ["--mixup", "0.8", "--cutmix", "1.0"]}
    for name, flags in runs.items():
        assert train_cli.main([*FLAGS, "--out", str(tmp_path / name), *flags]) == 0, name
    run = json.loads((tmp_path / "both" / "config.json").read_text())["run"]
    assert run["mixup"] == 0.8 and run["cutmix"] == 1.0
    params = {name: load_checkpoint(tmp_path / name / "last.npz").params["head.out.w"] for name in runs}
    assert np.array_equal(params["plain"], params["zero"])  # off is off, bit for bit
    for a, b in (("plain", "mixup"), ("plain", "cutmix"), ("mixup", "both"), ("cutmix", "both")):
        assert not np.array_equal(params[a], params[b]), (a, b)  # each flag reaches the step
    for flag in ("--mixup", "--cutmix"):
        with pytest.raises(SystemExit) as exc:
            train_cli.main([*FLAGS, "--out", str(tmp_path / "bad"), flag, "-0.5"])
        assert exc.value.code == 2 and "expected a number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_mixing_run_resumes_exactly(tmp_path) -> None:
    flags = [flag for flag in FLAGS if flag not in ("--max-steps", "2")] + ["--mixup", "0.8", "--cutmix", "1.0"]
    assert train_cli.main([*flags, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    assert train_cli.main([*flags, "--epochs", "1", "--out", str(tmp_path / "split")]) == 0
    assert train_cli.main(["--resume", str(tmp_path / "split"), "--epochs", "2", "--quiet"]) == 0
    a, b = (load_checkpoint(tmp_path / name / "last.npz") for name in ("straight", "split"))
    assert a.meta["state"]["global_step"] == b.meta["state"]["global_step"] == 8
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_help_describes_the_mixing_flags(capsys) -> None:
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--mixup A" in text and "--cutmix A" in text and "the image's own label" in text


# ---- the soft-target loss ------------------------------------------------------------------------------------
def _soft_targets(rng: np.random.Generator, batch: int, k: int) -> np.ndarray:
    labels, partners = rng.integers(0, k, batch), rng.integers(0, k, batch)
    return mix_targets(labels, partners, rng.random(batch), k, 0.1, "float64")


def test_soft_cross_entropy_gradient(backend, rng) -> None:
    z = backend.asarray(rng.standard_normal((4, 5)) * 2.0)
    q = backend.asarray(_soft_targets(rng, 4, 5))
    gradcheck(
        lambda z: soft_cross_entropy_forward(z, q)[0],
        lambda z, dy: (soft_cross_entropy_backward(soft_cross_entropy_forward(z, q)[1], float(dy)),),
        [z], rtol=1e-6,
    )


def test_soft_cross_entropy_matches_definition(backend, rng) -> None:
    z = rng.standard_normal((4, 6)) * 3
    q = _soft_targets(rng, 4, 6)
    loss, cache = soft_cross_entropy_forward(backend.asarray(z), backend.asarray(q))
    dz = to_numpy(soft_cross_entropy_backward(cache, 0.5))
    total = 0.0
    for b in range(4):
        logsum = math.log(sum(math.exp(v) for v in z[b]))
        total += -sum(q[b, k] * (z[b, k] - logsum) for k in range(6))
        for k in range(6):
            p = math.exp(z[b, k] - logsum)
            assert dz[b, k] == pytest.approx((p - q[b, k]) / 4 * 0.5, rel=1e-12, abs=1e-15)
    assert float(loss) == pytest.approx(total / 4, rel=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_cross_entropy_at_lam_one_is_the_cross_entropy(backend, rng, smoothing) -> None:
    z = backend.asarray(rng.standard_normal((5, 7)) * 2)
    labels = rng.integers(0, 7, 5)
    q = mix_targets(backend.asarray(labels), backend.asarray(rng.integers(0, 7, 5)), backend.asarray(np.ones(5)),
                    7, smoothing, "float64")
    soft, soft_cache = soft_cross_entropy_forward(z, q)
    hard, hard_cache = cross_entropy_forward(z, backend.asarray(labels), smoothing)
    assert float(soft) == pytest.approx(float(hard), rel=1e-14)
    np.testing.assert_allclose(to_numpy(soft_cross_entropy_backward(soft_cache, 0.7)),
                               to_numpy(cross_entropy_backward(hard_cache, 0.7)), rtol=1e-13, atol=1e-16)


def test_soft_cross_entropy_refuses_targets_that_are_not_distributions() -> None:
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        soft_cross_entropy_forward(z, np.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="probability distributions"):
        soft_cross_entropy_forward(z, np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="probability distributions"):
        soft_cross_entropy_forward(z, np.array([[1.5, -0.5, 0.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="batch, classes"):
        soft_cross_entropy_forward(np.zeros(3), np.ones(3) / 3)
