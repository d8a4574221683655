"""The moving average of the weights (npvit.optim.ema, --ema): the update against its per-parameter reference, the
warmup, skipped steps, the GPU path without a host read, evaluation by swapping, checkpoints and resume, and a
run without --ema left exactly as it was."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal

import numpy as np
import pytest

import npvit
from fakecupy import fake_cupy, from_fake, host_syncs, to_fake  # noqa: F401 (fixtures)
from npvit.train import memory
from npvit.train import command as train_cli
from npvit.train import trainer as trainer_module
from npvit.data.augment import Augmenter
from npvit.checkpoint import CheckpointError, check_run_settings, load_checkpoint, save_checkpoint
from npvit.settings import load_run_dataset
from npvit.distributed import SingleProcess
from npvit.optim.ema import WeightEMA, decay_at, ema_update_reference, swap_contents
from npvit.evaluate import evaluate
from npvit.loading import model_from_checkpoint
from npvit.optim.adamw import AdamW
from npvit.data.device import DeviceDataset
from npvit.train.step import RunningSums, StepSettings, train_step

# The training runs tests share: the tiny model on 16x16 synthetic images, a few seconds each, 7 steps/epoch.
from training_runs import BASE, comparable, on_thread_ranks, rows, run, toy_model, train_toy


def tiny_model(dtype: str = "float64", backend: str = "numpy", seed: int = 0) -> npvit.ViT:
    return npvit.ViT(npvit.ViTConfig.tiny(num_classes=3), backend=backend, dtype=dtype, seed=seed, threads=1)


# ---- the update ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, chunk", [("float64", None), ("float32", None), ("float64", 100)])
def test_update_equals_the_per_parameter_reference(dtype, chunk, monkeypatch) -> None:
    """WeightEMA.update (one in-place pass over the flat buffer, in pieces) gives the reference's bits,
    element by element, over steps with the warmup's changing decay."""
    if chunk is not None:
        monkeypatch.setattr("npvit.optim.ema._CHUNK", chunk)  # many pieces, the last one short
    model = tiny_model(dtype)
    assert model.params.flat.size % 100 != 0
    ema = WeightEMA(model.params, 0.99)
    reference = {name: p.copy() for name, p in model.params.items()}
    assert all(np.array_equal(ema.weights[n], p) for n, p in model.params.items())  # starts as a copy
    assert ema.weights.flat.dtype == model.params.flat.dtype and ema.weights.flat is not model.params.flat
    rng = np.random.default_rng(0)
    for step in (0, 1, 2, 5, 100, 2000):
        model.params.flat[...] = rng.standard_normal(model.params.flat.shape)  # as if AdamW had moved them
        ema.update(model.params.flat, step)
        ema_update_reference(reference, model.params, decay_at(0.99, step))
        for name, e in reference.items():
            np.testing.assert_array_equal(ema.weights[name], e, err_msg=f"{name} after step {step}")


def test_the_warmup_formula() -> None:
    """d_t = min(decay, (1 + t) / (10 + t)): 0.1 at the first step, the decay itself once t passes
    (10 decay - 1) / (1 - decay); and one update is d_t e + (1 - d_t) p with that d_t (float64)."""
    assert decay_at(0.999, 0) == 0.1 and decay_at(0.999, 10) == 11 / 20 and decay_at(0.999, 90) == 91 / 100
    turn = (10 * 0.999 - 1) / (1 - 0.999)  # 8991
    assert decay_at(0.999, math.floor(turn) - 1) < 0.999 and decay_at(0.999, math.ceil(turn) + 1) == 0.999
    assert all(decay_at(0.9, t) <= decay_at(0.9, t + 1) <= 0.9 for t in range(200))
    model = tiny_model()
    start = model.params.flat.copy()
    ema = WeightEMA(model.params, 0.999)
    model.params.flat[...] = 2.0 * start + 1.0
    ema.update(model.params.flat, 3)  # d_3 = 4 / 13
    np.testing.assert_allclose(ema.weights.flat, 4 / 13 * start + 9 / 13 * (2.0 * start + 1.0), rtol=1e-15)


def test_a_skipped_step_leaves_the_average_as_it_was() -> None:
    model = tiny_model()
    ema = WeightEMA(model.params, 0.9)
    before = ema.weights.flat.copy()
    model.params.flat[...] += 1.0
    ema.update(model.params.flat, 50, np.isfinite(np.float64(np.nan)))  # AdamW skipped this step
    assert np.array_equal(ema.weights.flat, before)
    ema.update(model.params.flat, 50, np.isfinite(np.float64(1.0)))
    assert not np.array_equal(ema.weights.flat, before)


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, float("nan"), float("inf"), True, "0.9", None])
def test_bad_decays_are_refused(decay) -> None:
    with pytest.raises(ValueError, match=r"the EMA decay must be a number in \(0, 1\) such as 0.999"):
        WeightEMA(tiny_model().params, decay)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.5", "nan", "x"])
def test_bad_ema_flags_are_a_clear_error(tmp_path, capsys, value) -> None:
    with pytest.raises(SystemExit) as exc:
        train_cli.main([*BASE, "--out", str(tmp_path / "x"), "--ema", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--ema: expected a number in (0, 1), such as 0.999" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(CheckpointError, match=r"the run setting ema \(--ema\): expected a number in \(0, 1\)"):
        check_run_settings({"ema": 1.0}, "last.npz")


def test_a_bad_decay_in_a_resumed_config_is_a_clear_error(tmp_path, capsys) -> None:
    status, out = run(tmp_path, "run", "--epochs", "1", "--ema", "0.9")
    assert status == 0
    doc = json.loads((out / "config.json").read_text())
    assert doc["run"]["ema"] == 0.9
    doc["run"]["ema"] = 1.0
    (out / "config.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert train_cli.main(["--resume", str(out), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "setting 'ema' expected a number in (0, 1), such as 0.999, got '1.0'" in err and "Traceback" not in err
    doc["run"]["ema"] = 0.9
    (out / "config.json").write_text(json.dumps(doc))
    assert train_cli.main(["--resume", str(out), "--epochs", "2", "--ema", "0.5"]) == 2
    assert "cannot change --ema when resuming" in capsys.readouterr().err


def test_memory_estimate_counts_the_average() -> None:
    cfg = npvit.ViTConfig.small(num_classes=10)
    for itemsize in (4, 8):
        with_ema, without = memory.training_step(cfg, itemsize, 2, ema=True), memory.training_step(cfg, itemsize, 2)
        assert with_ema.fixed - without.fixed == cfg.num_params() * itemsize
        assert with_ema.per_image == without.per_image


# ---- evaluation by swapping ---------------------------------------------------------------------------------
def test_applied_to_swaps_the_average_in_and_back_exactly(monkeypatch) -> None:
    monkeypatch.setattr("npvit.optim.ema._CHUNK", 100)  # several pieces, the last one short
    model = tiny_model("float32")
    ema = WeightEMA(model.params, 0.9)
    ema.weights.flat[...] = np.random.default_rng(1).standard_normal(ema.weights.flat.shape)
    ema.weights.flat[:3] = [-0.0, np.float32(1e-45), np.float32(3e38)]  # bits a careless copy would change
    raw, average = model.params.flat.copy(), ema.weights.flat.copy()
    named = {name: w.copy() for name, w in ema.weights.items()}
    with ema.applied_to(model.params):
        assert model.params.flat.tobytes() == average.tobytes()
        assert all(np.array_equal(model.params[n], w) for n, w in named.items())  # what the model's layers read
    assert model.params.flat.tobytes() == raw.tobytes() and ema.weights.flat.tobytes() == average.tobytes()
    with pytest.raises(KeyboardInterrupt):
        with ema.applied_to(model.params):
            raise KeyboardInterrupt
    assert model.params.flat.tobytes() == raw.tobytes() and ema.weights.flat.tobytes() == average.tobytes()
    with pytest.raises(ValueError, match="another model"):
        with ema.applied_to(npvit.ViT(npvit.ViTConfig.tiny(num_classes=5), dtype="float32").params):
            pass
    with pytest.raises(ValueError, match="cannot swap"):
        swap_contents(np.zeros(3), np.zeros(4))


# ---- the GPU path -------------------------------------------------------------------------------------------
def test_gpu_path_update_and_swap_read_nothing_and_equal_numpy(fake_cupy, host_syncs, monkeypatch) -> None:
    """On the GPU path the update is one fused kernel per step, skips by the device flag, and reads nothing
    back; its bits are NumPy's. Swapping the average in and out reads nothing either."""
    kernels = []
    real_fuse = fake_cupy.modules["cupy"].fuse

    def counting_fuse(*args, **kwargs):
        def decorate(fn):
            fused = real_fuse(*args, **kwargs)(fn)
            return lambda *a: kernels.append(kwargs.get("kernel_name")) or fused(*a)
        return decorate

    monkeypatch.setattr(fake_cupy.modules["cupy"], "fuse", counting_fuse)
    monkeypatch.setattr("npvit.optim.ema._FUSED", {})
    cpu, gpu = tiny_model(), tiny_model(backend="cupy")
    emas = [WeightEMA(cpu.params, 0.95), WeightEMA(gpu.params, 0.95)]
    rng = np.random.default_rng(2)
    cp = fake_cupy.cupy
    for step, finite in enumerate([True, True, False, True]):
        values = rng.standard_normal(cpu.params.flat.shape)
        cpu.params.flat[...] = values
        gpu.params.flat[...] = to_fake(values)
        flag = cp.isfinite(to_fake(np.float64(1.0 if finite else np.nan)))  # a device flag, as train_step's
        host_syncs.reset()
        emas[1].update(gpu.params.flat, step, flag)
        assert host_syncs.gets == 0 and host_syncs.uploads == 0
        emas[0].update(cpu.params.flat, step, np.bool_(finite))
        assert from_fake(emas[1].weights.flat).tobytes() == emas[0].weights.flat.tobytes(), step
    assert kernels == ["npvit_ema"] * 4
    raw, average = from_fake(gpu.params.flat), from_fake(emas[1].weights.flat)
    host_syncs.reset()
    with emas[1].applied_to(gpu.params):
        swapped = gpu.params.flat.copy()
    assert host_syncs.gets == 0 and host_syncs.uploads == 0
    assert from_fake(swapped).tobytes() == average.tobytes() and from_fake(gpu.params.flat).tobytes() == raw.tobytes()
    assert isinstance(emas[1].state_dict()["pos_embed"], np.ndarray)  # the checkpoint's explicit copy


def test_gpu_path_training_steps_with_ema_read_nothing_and_equal_numpy(fake_cupy, host_syncs) -> None:
    """train_step with an average, on the GPU path (strict: any implicit read raises) and on NumPy, float64,
    without dropout and augmentation (their streams differ by backend): the same averages."""
    from fakecupy import SYNCS

    cfg = dataclasses.replace(npvit.ViTConfig.tiny(), dropout=0.0, attention_dropout=0.0, head_dropout=0.0)
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (12, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.uint8)
    y = rng.integers(0, cfg.num_classes, 12)
    averages, counts = {}, {}
    for name in ("numpy", "cupy"):
        backend = npvit.get_backend(name)
        model = npvit.ViT(cfg, backend=backend, dtype="float64", seed=5, threads=1)
        opt = AdamW(model.params, lr=1e-2, clip_norm=0.5, exclude_from_decay=model.no_decay_names())
        ema = WeightEMA(model.params, 0.9)
        aug = Augmenter(np.full(3, 120.0), np.full(3, 3600.0), image_size=cfg.image_size, flip=False,
                        rotation=0.0, zoom=0.0, dtype="float64")
        data = DeviceDataset(backend, x, y, cfg.num_classes)
        sums = RunningSums(backend.xp)
        SYNCS.reset()
        for step in range(3):
            train_step(model, opt, aug, data, np.arange(4 * step, 4 * step + 4), step,
                       StepSettings(seed=3), sums, ema=ema)
        counts[name] = SYNCS.gets
        averages[name] = (from_fake(ema.weights.flat) if name == "cupy" else ema.weights.flat.copy(),
                          from_fake(model.params.flat) if name == "cupy" else model.params.flat.copy())
    assert counts["cupy"] == 0
    np.testing.assert_allclose(averages["cupy"][0], averages["numpy"][0], rtol=1e-10, atol=1e-13)
    assert not np.allclose(averages["numpy"][0], averages["numpy"][1])  # the average is not the weights


def test_train_step_updates_the_average_after_each_optimizer_step(monkeypatch) -> None:
    """In train_step the average follows the weights AdamW leaves, with the warmup's decay of the step's index;
    a step AdamW skips (its gradient is not finite) leaves the average as it was."""
    import npvit.train.step as step_module

    cfg = npvit.ViTConfig.tiny(num_classes=3)
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 3, 16)
    model = npvit.ViT(cfg, dtype="float64", seed=1, threads=1)
    opt, ema = AdamW(model.params, lr=1e-2), WeightEMA(model.params, 0.9)
    reference = {name: p.copy() for name, p in model.params.items()}
    augmenter = Augmenter(np.full(3, 120.0), np.full(3, 3000.0), image_size=8, dtype="float64")
    sums = RunningSums(np)
    for step in (0, 1, 2, 7):  # the index of the step in the run, as train.py passes it
        train_step(model, opt, augmenter, DeviceDataset(model.backend, x, y), np.arange(4 * (step % 4), 4 * (step % 4) + 4), step,
                   StepSettings(seed=0), sums, ema=ema)
        ema_update_reference(reference, model.params, decay_at(0.9, step))
        assert all(np.array_equal(ema.weights[n], e) for n, e in reference.items()), step
    before, weights = ema.weights.flat.copy(), model.params.flat.copy()
    real = step_module.cross_entropy_backward
    monkeypatch.setattr(step_module, "cross_entropy_backward", lambda *a: real(*a) * np.nan)
    train_step(model, opt, augmenter, DeviceDataset(model.backend, x, y), np.arange(4), 8, StepSettings(seed=0), sums, ema=ema)
    assert np.array_equal(model.params.flat, weights) and np.array_equal(ema.weights.flat, before)
    assert sums.read()[2] == 1  # the step was counted as not finite: the run stops there


# ---- data parallel ------------------------------------------------------------------------------------------
def test_two_ranks_keep_the_average_of_one_process() -> None:
    """Every rank holds the same weights after a step, so each updates its average alone: two ranks (threads,
    real collectives) end with identical averages, equal to one process's (float64, to the rounding of the
    gradient sums). The 2-process run under mpiexec is in tests/distributed/test_distributed.py."""
    cfg = dataclasses.replace(npvit.ViTConfig.tiny(num_classes=4), dropout=0.2)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 40).astype(np.int64)
    batches = [rng.permutation(40)[:16], rng.permutation(40)[:9]]

    def train(comm) -> np.ndarray:
        model, opt = toy_model(cfg)
        ema = WeightEMA(model.params, 0.9)
        augmenter = Augmenter(np.full(3, 120.0), np.full(3, 3000.0), image_size=8, dtype="float64")
        train_toy(comm, model, opt, augmenter, x, y, batches, StepSettings(seed=0), ema=ema)
        return ema.weights.flat.copy()

    single = train(SingleProcess())
    results = on_thread_ranks(train, 2)
    assert results[0].tobytes() == results[1].tobytes()
    np.testing.assert_allclose(results[0], single, rtol=1e-10, atol=1e-12)


# ---- the training program -----------------------------------------------------------------------------------
def test_without_ema_nothing_is_made_and_nothing_changes(tmp_path, monkeypatch) -> None:
    """No --ema: no average is built, the files hold what they held before; with --ema the raw weights follow
    the same path bit for bit (the average never feeds back), and their validation numbers are the row's
    *_raw columns."""
    real = trainer_module.WeightEMA
    monkeypatch.setattr(trainer_module, "WeightEMA", lambda *a: pytest.fail("an average was built without --ema"))
    assert run(tmp_path, "off", "--epochs", "2")[0] == 0
    monkeypatch.setattr(trainer_module, "WeightEMA", real)
    assert run(tmp_path, "on", "--epochs", "2", "--ema", "0.9")[0] == 0
    off, on = load_checkpoint(tmp_path / "off" / "last.npz"), load_checkpoint(tmp_path / "on" / "last.npz")
    assert off.ema == {} and set(on.ema) == set(on.params)
    assert all(np.array_equal(off.params[k], on.params[k]) for k in off.params)
    assert all(np.array_equal(off.optimizer[k], on.optimizer[k]) for k in off.optimizer)
    assert "weights" not in load_checkpoint(tmp_path / "off" / "best.npz").meta
    assert "weights" not in json.loads((tmp_path / "off" / "summary.json").read_text())
    for a, b in zip(rows(tmp_path / "off"), rows(tmp_path / "on")):
        assert not any(k.endswith("_raw") for k in a)
        assert {k: a[k] for k in ("train_loss", "train_top1", "step")} == {k: b[k] for k in ("train_loss",
                                                                                           "train_top1", "step")}
        assert (a["val_loss"], a["val_top1"], a["val_top5"]) == (b["val_loss_raw"], b["val_top1_raw"],
                                                                  b["val_top5_raw"])
    assert any(a["val_loss"] != b["val_loss"] for a, b in zip(rows(tmp_path / "off"), rows(tmp_path / "on")))


def test_best_npz_holds_the_average_and_the_row_validates_it(tmp_path, capsys) -> None:
    """best.npz's weights are the average last.npz keeps under ema/; the row's val_* are those weights' numbers
    on the validation split and val_*_raw the raw weights'; the test is of the average."""
    status, out = run(tmp_path, "run", "--epochs", "1", "--ema", "0.8")
    assert status == 0
    printed = capsys.readouterr().out
    assert "EMA of the weights, decay 0.8;" in printed and "test (60 images, best epoch 1, EMA weights)" in printed
    assert "(EMA; raw weights: loss" in printed
    best, last = load_checkpoint(out / "best.npz"), load_checkpoint(out / "last.npz")
    assert best.meta["weights"] == "ema" and best.ema == {}
    assert best.optimizer == {} and last.optimizer  # AdamW's moments are the raw weights': last.npz only
    assert all(np.array_equal(best.params[k], last.ema[k]) for k in last.params)
    assert not all(np.array_equal(best.params[k], last.params[k]) for k in last.params)
    data = load_run_dataset(last.meta["run"], progress=False)
    val = trainer_module.split_train_val(data.x_train, data.y_train, last.meta["run"]["validation_split"])[2:]
    (row,) = rows(out)
    for ckpt, suffix in ((best, ""), (last, "_raw")):
        model, augmenter = model_from_checkpoint(ckpt)
        result = evaluate(model, augmenter, *val)
        assert result.top1 == row[f"val_top1{suffix}"]
        assert result.loss == pytest.approx(row[f"val_loss{suffix}"], rel=1e-6)
    model, augmenter = model_from_checkpoint(best)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] == "ema" and summary["best_val_top1"] == row["val_top1"]
    assert evaluate(model, augmenter, data.x_test, data.y_test).loss == pytest.approx(summary["test"]["loss"],
                                                                                     rel=1e-6)


def test_curves_draw_a_run_with_ema(tmp_path) -> None:
    from npvit.visualize.curves import curves_figure, read_run_metrics

    status, out = run(tmp_path, "run", "--epochs", "2", "--ema", "0.9")
    assert status == 0
    logged, summary = read_run_metrics(out)
    assert len(logged) == 2 and summary["weights"] == "ema"
    figure = curves_figure(logged, summary)
    lines = {line.get_label(): list(line.get_ydata()) for line in figure.axes[1].get_lines()}
    assert lines["validation (EMA weights)"] == [100 * r["val_top1"] for r in logged]
    assert lines["validation (raw weights)"] == [100 * r["val_top1_raw"] for r in logged]


def test_resume_equals_uninterrupted_with_ema(tmp_path) -> None:
    assert run(tmp_path, "straight", "--epochs", "2", "--ema", "0.9")[0] == 0
    assert run(tmp_path, "split", "--epochs", "1", "--ema", "0.9")[0] == 0
    assert train_cli.main(["--resume", str(tmp_path / "split"), "--epochs", "2", "--quiet"]) == 0
    for name in ("last.npz", "best.npz"):
        a, b = load_checkpoint(tmp_path / "straight" / name), load_checkpoint(tmp_path / "split" / name)
        for field in ("params", "optimizer", "ema"):
            x, y = getattr(a, field), getattr(b, field)
            assert set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x), (name, field)
    assert load_checkpoint(tmp_path / "straight" / "last.npz").ema
    assert [comparable(r) for r in rows(tmp_path / "straight")] == [comparable(r) for r in rows(tmp_path / "split")]


def test_ctrl_c_mid_epoch_resumes_the_average_exactly(tmp_path, monkeypatch) -> None:
    assert run(tmp_path, "straight", "--epochs", "2", "--ema", "0.9")[0] == 0

    def interrupt(step: int) -> None:
        if step == 10:  # mid-way through epoch 2 (7 steps per epoch)
            os.kill(os.getpid(), signal.SIGINT)

    real_train = train_cli.train
    monkeypatch.setattr(train_cli, "train", lambda s, r=None: real_train(s, r, on_step=interrupt))
    assert run(tmp_path, "split", "--epochs", "2", "--ema", "0.9")[0] == 130
    monkeypatch.setattr(train_cli, "train", real_train)
    assert load_checkpoint(tmp_path / "split" / "last.npz").meta["state"]["global_step"] == 10
    assert train_cli.main(["--resume", str(tmp_path / "split"), "--quiet"]) == 0
    a, b = load_checkpoint(tmp_path / "straight" / "last.npz"), load_checkpoint(tmp_path / "split" / "last.npz")
    assert all(np.array_equal(a.ema[k], b.ema[k]) for k in a.ema) and all(
        np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert [comparable(r) for r in rows(tmp_path / "straight")] == [comparable(r) for r in rows(tmp_path / "split")]


def damage(entries: dict, how: str) -> dict:
    name = "pos_embed"
    entries = dict(entries)
    if how == "missing":
        del entries[name]
    elif how == "shape":
        entries[name] = entries[name][:-1]
    elif how == "dtype":
        entries[name] = entries[name].astype(np.int32)
    elif how == "nan":
        entries[name] = entries[name].copy()
        entries[name].flat[0] = np.nan
    elif how == "none":
        entries = {}
    return entries


@pytest.mark.parametrize("how, message", [
    ("missing", "the EMA weights have no entry 'pos_embed'; they belong to a different model"),
    ("shape", "the EMA weights 'pos_embed' have shape (3, 8), the parameter has (4, 8)"),
    ("dtype", "EMA weight pos_embed is int32, not float32 as the checkpoint's dtype says"),
    ("nan", "holds non-finite EMA weights (pos_embed)"),
    ("none", "holds no EMA weights (no ema/ entries) but this run keeps an EMA (--ema 0.9)"),
])
def test_resume_checks_the_saved_average(tmp_path, capsys, how, message) -> None:
    status, out = run(tmp_path, "run", "--epochs", "1", "--ema", "0.9")
    assert status == 0
    ckpt = load_checkpoint(out / "last.npz")
    meta = {k: v for k, v in ckpt.meta.items() if k != "format_version"}
    save_checkpoint(out / "last.npz", ckpt.params, ckpt.optimizer, meta, ema=damage(ckpt.ema, how))
    capsys.readouterr()
    assert train_cli.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
