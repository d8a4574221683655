"""--cuda-graph (npvit.train.graph): the model's part of a step captured once on the fake CuPy, whose graph
replays the recorded calls on the captured buffers (tests/support/fakegraph.py), gives the weights of the
uncaptured steps; a host sync inside the capture raises; the command refuses what cannot be captured."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fakecupy import LAUNCHES, HostSyncError, fake_cupy, from_fake, host_syncs  # noqa: F401 (fixtures)

import npvit
from npvit.data.augment import Augmenter
from npvit.data.device import DeviceDataset
from npvit.optim.ema import WeightEMA
from npvit.settings import UsageError
from npvit.train.graph import CapturedStep, check_cuda_graph
from npvit.train.step import RunningSums, StepSettings, train_step


def _run(captured: bool, steps: int = 4, batches=(4, 4, 4, 4)):
    """``steps`` steps of the tiny model with dropout, clipping, decay exclusion, warmup-like changing learning
    rates and an EMA; through CapturedStep or train_step. Returns (params, ema, sums, moments, captured step)."""
    cfg = dataclasses.replace(npvit.ViTConfig.tiny(), dropout=0.1, attention_dropout=0.1, head_dropout=0.1)
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (16, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.uint8)
    y = rng.integers(0, cfg.num_classes, 16)
    backend = npvit.get_backend("cupy")
    model = npvit.ViT(cfg, backend=backend, dtype="float32", seed=5)
    opt = npvit.AdamW(model.params, clip_norm=0.5, exclude_from_decay=model.no_decay_names())
    ema = WeightEMA(model.params, 0.9)
    aug = Augmenter(np.full(3, 120.0), np.full(3, 3600.0), image_size=cfg.image_size, flip=True, rotation=0.05,
                    zoom=0.2, dtype="float32")
    data = DeviceDataset(backend, x, y, cfg.num_classes)
    sums = RunningSums(backend.xp)
    settings = StepSettings(seed=3, label_smoothing=0.1)
    step_fn = CapturedStep(model, opt, ema, 4) if captured else None
    start = 0
    for step, size in zip(range(steps), batches):
        opt.lr = 1e-3 * (step + 1)  # a schedule: the scalars change every step
        batch = np.arange(start, start + size) % len(x)
        start += size
        if captured:
            step_fn(aug, data, batch, step, settings, sums)
        else:
            train_step(model, opt, aug, data, batch, step, settings, sums, ema=ema)
    return (from_fake(model.params.flat), from_fake(ema.weights.flat), sums.read(), from_fake(opt.m.flat),
            opt.step_count, step_fn)


@pytest.mark.parametrize("batches", [(4, 4, 4, 4), (4, 4, 4, 3)])
def test_the_replayed_graph_trains_the_weights_the_uncaptured_steps_train(fake_cupy, host_syncs, batches) -> None:
    """Step 0 runs uncaptured, step 1 is captured (and launched), steps 2 and 3 are launches (or, for a short
    last batch, uncaptured again): three steps from the graph, with dropout, the learning rate, AdamW's bias
    corrections and the EMA's decay changing every step."""
    expected = _run(False, batches=batches)
    got = _run(True, batches=batches)
    step_fn = got[-1]
    assert step_fn.graph is not None and step_fn.launches == (3 if batches[-1] == 4 else 2)
    for g, e in zip(got[:4], expected[:4]):
        np.testing.assert_array_equal(g, e)
    assert got[4] == expected[4] == 4
    assert not np.array_equal(got[0], _run(False, steps=3)[0])  # the last launch did change the weights


def test_a_launch_is_one_kernel_where_the_step_was_hundreds(fake_cupy) -> None:
    step_fn = _run(True, steps=2)[-1]
    LAUNCHES.reset()
    step_fn.graph.launch(stream=step_fn.stream)
    assert LAUNCHES.counts == {"graph": 1}
    assert len(step_fn.graph.calls) > 100


def test_a_host_sync_inside_the_capture_raises(fake_cupy, monkeypatch) -> None:
    """Reading a value back inside the captured step (here: the loss, as a float) is what CUDA refuses while a
    stream captures: the fake raises, strict mode or not."""
    import npvit.train.step as step_module

    real = step_module.cross_entropy_forward

    def reading(*args, **kwargs):
        loss, cache = real(*args, **kwargs)
        float(loss)  # a host read
        return loss, cache

    with fake_cupy.syncs.recording():  # not strict: uncaptured, the read is only recorded
        monkeypatch.setattr(step_module, "cross_entropy_forward", reading)
        with pytest.raises(HostSyncError, match="during a CUDA graph capture"):
            _run(True, steps=2)


def test_capture_needs_a_stream_of_its_own(fake_cupy) -> None:
    cp = fake_cupy.cupy
    with pytest.raises(RuntimeError, match="legacy"):
        cp.cuda.Stream(null=True).begin_capture()


@pytest.mark.parametrize("settings, processes, why", [
    (dict(backend="numpy"), 1, "--backend cupy"),
    (dict(backend="cupy"), 2, "one process"),
    (dict(backend="cupy", mixup=0.2), 1, "--mixup"),
    (dict(backend="cupy", drop_path=0.1), 1, "--drop-path"),
])
def test_the_command_refuses_what_cannot_be_captured(settings, processes, why) -> None:
    with pytest.raises(UsageError, match=why):
        check_cuda_graph({"cuda_graph": True, **settings}, processes)
    check_cuda_graph({"cuda_graph": False, **settings}, processes)  # off: nothing to refuse
