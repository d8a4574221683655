"""Drop path (stochastic depth): the kernel against finite differences and element by element, its keyed
masks, the per-block rates, and the model with it on (gradients) and off (bit-identical, nothing drawn)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import npvit
from npvit import ViT, ViTConfig, gradcheck, cross_entropy_backward, cross_entropy_forward
from npvit.kernels import DropoutKey, drop_path_backward, drop_path_forward
from npvit.kernels.dropout import dropout_scale


def test_gradient_with_a_fixed_mask(rng) -> None:
    x = rng.standard_normal((5, 3, 4))
    mask = np.array([True, False, True, True, False]).reshape(5, 1, 1)
    gradcheck(lambda x: drop_path_forward(x, 0.3, mask=mask)[0],
                   lambda x, dy: [drop_path_backward(dy, drop_path_forward(x, 0.3, mask=mask)[1])],
                   [x], rtol=1e-6)


def test_element_by_element(backend, rng) -> None:
    """Each sample's entries all kept and scaled by 1 / (1 - p), or all zero; the same for the gradient."""
    rate, batch = 0.25, 4000
    x = rng.standard_normal((batch, 3, 2)) + 3.0  # no entry is 0, so a zero means dropped
    dy = rng.standard_normal(x.shape)
    y, cache = drop_path_forward(backend.asarray(x), rate, DropoutKey(7, "blocks.0.drop_path1"))
    dx = drop_path_backward(backend.asarray(dy), cache)
    y, dx = npvit.backend.to_numpy(y), npvit.backend.to_numpy(dx)
    scale = 1.0 / (1.0 - round(rate * 65536) / 65536)
    assert scale == dropout_scale(rate)
    kept = np.zeros(batch, dtype=bool)
    for b in range(batch):
        if y[b, 0, 0] == 0.0:
            assert np.all(y[b] == 0.0) and np.all(dx[b] == 0.0), f"sample {b} dropped in part"
        else:
            kept[b] = True
            np.testing.assert_allclose(y[b], x[b] * scale, rtol=1e-15)
            np.testing.assert_allclose(dx[b], dy[b] * scale, rtol=1e-15)
    keep = 1.0 - round(rate * 65536) / 65536
    assert abs(kept.mean() - keep) < 4 * np.sqrt(keep * (1 - keep) / batch)  # 4 sigma


def test_keyed_masks_follow_the_global_sample_index(backend) -> None:
    x = backend.asarray(np.random.default_rng(0).standard_normal((12, 3, 2)) + 3.0)
    key = DropoutKey(5, "blocks.1.drop_path2")
    whole, _ = drop_path_forward(x, 0.5, key)
    for start, stop in ((0, 5), (5, 12), (7, 8)):
        part, _ = drop_path_forward(x[start:stop], 0.5, key.shifted(start))
        np.testing.assert_array_equal(npvit.backend.to_numpy(part), npvit.backend.to_numpy(whole[start:stop]))
    shifted, _ = drop_path_forward(x[5:12], 0.5, key)
    assert not np.array_equal(npvit.backend.to_numpy(shifted), npvit.backend.to_numpy(whole[5:12]))
    other, _ = drop_path_forward(x, 0.5, key.at("blocks.1.drop_path1"))
    assert not np.array_equal(npvit.backend.to_numpy(other), npvit.backend.to_numpy(whole))


def test_bad_input() -> None:
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match="DropoutKey"):
        drop_path_forward(x, 0.5)
    with pytest.raises(ValueError, match=r"drop path rate must be in \[0, 1\)"):
        drop_path_forward(x, 1.0, DropoutKey(0))
    with pytest.raises(ValueError, match=r"shape \(3, 1\)"):
        drop_path_forward(x, 0.5, mask=np.ones((3, 2), dtype=bool))
    assert drop_path_forward(x, 0.0)[0] is x  # rate 0: the identity, no key needed


def test_rates_rise_linearly_over_the_blocks() -> None:
    cfg = dataclasses.replace(ViTConfig.tiny(), depth=5, drop_path=0.2)
    assert [cfg.drop_path_rate(i) for i in range(5)] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert dataclasses.replace(cfg, depth=1).drop_path_rate(0) == 0.2
    assert [b.drop_path for b in ViT(cfg).blocks] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert all(c().drop_path == 0.0 for c in npvit.config.PRESETS.values())
    with pytest.raises(ValueError, match=r"drop_path must be in \[0, 1\)"):
        dataclasses.replace(cfg, drop_path=1.0)


@pytest.mark.parametrize("pool", ["flatten", "cls"])
def test_whole_model_gradients_with_drop_path(backend, pool, monkeypatch) -> None:
    """Every parameter and the images, drop path and dropout on (one seed: the same masks at every evaluation)."""
    cfg = dataclasses.replace(ViTConfig.tiny(), pool=pool, depth=3, dropout=0.2, attention_dropout=0.2,
                              head_dropout=0.3, drop_path=0.5)
    model = ViT(cfg, backend=backend, dtype="float64", seed=1)
    data = np.random.default_rng(0)
    for p in model.params.values():  # zero biases would hide errors in their gradient paths
        if p.ndim == 1:
            p[...] = backend.asarray(data.standard_normal(p.shape) * 0.1)
    images = backend.asarray(data.standard_normal((6, 8, 8, 3)))
    labels = backend.asarray(np.array([0, 1, 4, 2, 3, 0]))
    names = list(model.params)
    drawn: dict[str, np.ndarray] = {}  # the masks of the drop path sites

    def recording(x, rate, key=None, mask=None):
        y, cache = drop_path_forward(x, rate, key, mask)
        drawn[key.site] = npvit.backend.to_numpy(cache[0]).ravel()
        return y, cache

    monkeypatch.setattr(npvit.model.module, "drop_path_forward", recording)

    def loss_of(x):
        logits = model.forward(x, training=True, dropout_seed=42)
        return cross_entropy_forward(logits, labels, label_smoothing=0.1)

    def backward(*inputs_and_dy):
        *inputs, dloss = inputs_and_dy
        _, cache = loss_of(inputs[-1])
        dimages = model.backward(cross_entropy_backward(cache, float(dloss)))
        return [model.grads[n] for n in names] + [dimages]

    result = gradcheck(lambda *a: loss_of(a[-1])[0], backward, [model.params[n] for n in names] + [images],
                            names=names + ["images"], rtol=1e-6, max_checks=20)
    assert result.max_error < 1e-6
    # Blocks 1 and 2 (rates 0.25, 0.5) ran through drop path, some samples' branches dropped, some kept.
    assert sorted(drawn) == [f"blocks.{i}.drop_path{j}" for i in (1, 2) for j in (1, 2)]
    masks = np.concatenate(list(drawn.values()))
    assert masks.any() and not masks.all()


def _step(cfg: ViTConfig, images, labels):
    model = ViT(cfg, dtype="float64", seed=3, threads=2)
    logits = model.forward(images, training=True, dropout_seed=9)
    dimages = model.backward(cross_entropy_backward(cross_entropy_forward(logits, labels)[1]))
    return logits, dimages, {n: g.copy() for n, g in model.grads.items()}


def test_rate_zero_draws_nothing_and_changes_nothing(monkeypatch) -> None:
    """drop_path=0 never reaches the kernel; a rate that rounds to a drop probability of 0 (mask all kept,
    scale exactly 1) gives bit-identical numbers, so the model without drop path is the model it was."""
    cfg = dataclasses.replace(ViTConfig.tiny(), depth=3, dropout=0.2, attention_dropout=0.2, head_dropout=0.3)
    data = np.random.default_rng(0)
    images, labels = data.standard_normal((5, 8, 8, 3)), data.integers(0, cfg.num_classes, 5)
    sites: list[str] = []
    keep_mask = npvit.kernels.random.keep_mask

    def recording(xp, seed, site, first, shape, threshold):
        sites.append(site)
        return keep_mask(xp, seed, site, first, shape, threshold)

    monkeypatch.setattr(npvit.kernels.dropout, "keep_mask", recording)
    off = _step(cfg, images, labels)
    assert sites and not any("drop_path" in s for s in sites)
    sites.clear()
    tiny_rate = dataclasses.replace(cfg, drop_path=1e-6)  # round(1e-6 * 65536) = 0: nothing dropped
    on = _step(tiny_rate, images, labels)
    assert {f"blocks.{i}.drop_path{j}" for i in (1, 2) for j in (1, 2)} <= set(sites)
    assert not any(s.startswith("blocks.0.drop_path") for s in sites)  # block 0's rate is 0
    np.testing.assert_array_equal(on[0], off[0])
    np.testing.assert_array_equal(on[1], off[1])
    for name, g in off[2].items():
        np.testing.assert_array_equal(on[2][name], g, err_msg=name)
    dropped = _step(dataclasses.replace(cfg, drop_path=0.5), images, labels)
    assert not np.allclose(dropped[0], off[0])  # a real rate changes the numbers


def test_the_training_flag_reaches_the_model_and_the_saved_run(tmp_path, capsys) -> None:
    from npvit.train import command as train_cli

    flags = ["--dataset", "synthetic", "--synthetic-size", "64,16", "--synthetic-image-size", "8",
             "--synthetic-classes", "4", "--preset", "tiny", "--batch-size", "16", "--max-steps", "2",
             "--threads", "1", "--quiet"]
    assert train_cli.main([*flags, "--drop-path", "0.3", "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["drop_path"] == 0.3
    assert train_cli.model_config(dict(train_cli.DEFAULTS), 10).drop_path == 0.0  # the Keras recipe: none
    try:
        status = train_cli.main([*flags, "--drop-path", "1.5", "--out", str(tmp_path / "bad")])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2 and "--drop-path" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
