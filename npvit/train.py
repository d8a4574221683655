"""The training program of the Keras example "Image classification with Vision Transformer", on npvit.

    python -m npvit.train                                   # the example: CIFAR-100, 100 epochs, NumPy
    python -m npvit.train --backend cupy                    # the same on a GPU
    python -m npvit.train --dataset cifar10 --data-dir ~/cifar-10-binary.tar.gz --preset small --epochs 10
    python -m npvit.train --resume runs/cifar100-keras      # continue an interrupted run

Defaults are the example's: batch 256, AdamW (lr 1e-3, weight decay 1e-4), 10% of the training split (its
last images) held out for validation, flip/rotate/zoom augmentation, the weights with the best validation
accuracy evaluated on the test split at the end. See ``--help`` for every flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .augment import Augmenter, channel_stats
from .backend import BACKEND_NAMES, BackendUnavailableError, get_backend
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .cli_types import (
    fraction,
    int_list,
    non_negative,
    non_negative_int,
    positive,
    positive_int,
    unit_interval,
)
from .config import GELUS, POOLS, PRESETS, ViTConfig
from .data import DATASETS, DataError, load_run_dataset
from .evaluate import EvalResult, evaluate
from .io import atomic_write
from .kernels import cross_entropy_backward, cross_entropy_forward
from .model import ViT
from .optim import DECAY_CONVENTIONS, AdamW
from .progress import ProgressBar, format_seconds
from .schedule import SCHEDULES, learning_rate

# Every setting of a run with its default. Model settings left as None come from the preset.
DEFAULTS: dict[str, Any] = {
    # data
    "dataset": "cifar100", "data_dir": None, "cache_dir": None, "label_mode": "fine", "download": True,
    "synthetic_size": (1000, 200), "synthetic_image_size": 32, "synthetic_classes": 10,
    "validation_split": 0.1, "train_subset": None,
    # model
    "preset": "keras", "image_size": None, "patch_size": None, "projection_dim": None, "num_heads": None,
    "key_dim": None, "transformer_layers": None, "transformer_units": None, "mlp_head_units": None,
    "dropout": None, "attention_dropout": None, "head_dropout": None, "pool": None, "gelu": None,
    # augmentation
    "flip": True, "rotation": 0.02, "zoom": 0.2,
    # optimisation
    "batch_size": 256, "epochs": 100, "max_steps": None, "learning_rate": 1e-3, "weight_decay": 1e-4,
    "decay_convention": "keras", "epsilon": 1e-7, "exclude_from_decay": False, "clip_norm": None,
    "lr_schedule": "constant", "warmup_steps": 0, "label_smoothing": 0.0,
    # execution
    "backend": "numpy", "dtype": "float32", "seed": 0, "threads": None, "eval_batch_size": 256, "out": None, "quiet": False,
}
# What may differ when a run is resumed: where things are, how it runs, and how long it goes on.
RESUMABLE = {"data_dir", "cache_dir", "download", "backend", "eval_batch_size", "quiet", "epochs", "max_steps"}


class UsageError(Exception):
    """A bad combination of flags; the message says what to change."""


# ---- command line -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m npvit.train", description=__doc__.splitlines()[0], usage="%(prog)s [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS,
        epilog="Defaults are those of the Keras example. Model flags left out come from --preset.",
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=DATASETS, help="cifar10, cifar100 (default) or synthetic")
    d.add_argument("--data-dir", help="existing copy: the .tar.gz archive or its extracted folder, binary or "
                                      "python layout (no download then)")
    d.add_argument("--cache-dir", help="download cache (default $NPVIT_CACHE or ~/.cache/npvit)")
    d.add_argument("--label-mode", choices=("fine", "coarse"), help="CIFAR-100 labels (default fine: 100 classes)")
    d.add_argument("--no-download", dest="download", action="store_false", help="fail instead of downloading")
    d.add_argument("--synthetic-size", type=int_list, help="synthetic train,test image counts (default 1000,200)")
    d.add_argument("--synthetic-image-size", type=positive_int, help="synthetic image side (default 32)")
    d.add_argument("--synthetic-classes", type=positive_int, help="synthetic class count (default 10)")
    d.add_argument("--validation-split", type=fraction, help="last fraction of train held out (default 0.1)")
    d.add_argument("--train-subset", type=positive_int, help="train on the first N training images only")

    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=sorted(PRESETS), help="keras (default: the 2021 example), keras-wide "
                   "(its current revision), small (32x32 input), tiny (for smoke tests)")
    m.add_argument("--image-size", type=positive_int, help="input side after resizing (keras: 72)")
    m.add_argument("--patch-size", type=positive_int, help="patch side (keras: 6)")
    m.add_argument("--projection-dim", type=positive_int, help="token width (keras: 64); key_dim and "
                   "transformer units follow it unless given")
    m.add_argument("--num-heads", type=positive_int, help="attention heads (keras: 4)")
    m.add_argument("--key-dim", type=positive_int, help="width of each head (keras: projection_dim)")
    m.add_argument("--transformer-layers", type=positive_int, help="transformer blocks (keras: 8)")
    m.add_argument("--transformer-units", type=int_list, help="block MLP sizes (keras: 128,64)")
    m.add_argument("--mlp-head-units", type=int_list, help="classifier MLP sizes (keras: 2048,1024)")
    m.add_argument("--dropout", type=fraction, help="block MLP dropout (keras: 0.1)")
    m.add_argument("--attention-dropout", type=fraction, help="attention dropout (keras: 0.1)")
    m.add_argument("--head-dropout", type=fraction, help="classifier dropout (keras: 0.5)")
    m.add_argument("--pool", choices=POOLS, help="flatten (keras), cls (the paper's class token), gap")
    m.add_argument("--gelu", choices=GELUS, help="erf (exact, keras) or tanh")

    a = p.add_argument_group("augmentation (training only)")
    a.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    a.add_argument("--rotation", type=unit_interval, help="rotation factor, fraction of a turn (default 0.02)")
    a.add_argument("--zoom", type=unit_interval, help="zoom factor for height and width (default 0.2)")

    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=positive_int, help="images per step (default 256)")
    o.add_argument("--epochs", type=positive_int, help="epochs (default 100)")
    o.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps in all")
    o.add_argument("--learning-rate", "--lr", dest="learning_rate", type=non_negative, help="default 1e-3")
    o.add_argument("--weight-decay", type=non_negative, help="decoupled weight decay (default 1e-4)")
    o.add_argument("--decay-convention", choices=DECAY_CONVENTIONS,
                   help="keras: p -= lr*wd*p (Keras 3, PyTorch; default); tfa: p -= wd*p (TensorFlow Addons)")
    o.add_argument("--epsilon", type=positive, help="AdamW epsilon (default 1e-7)")
    o.add_argument("--exclude-from-decay", action="store_true", help="no decay for biases, norms, embeddings")
    o.add_argument("--clip-norm", type=positive, help="clip gradients to this global norm")
    o.add_argument("--lr-schedule", choices=SCHEDULES, help="constant (default) or cosine decay")
    o.add_argument("--warmup-steps", type=non_negative_int, help="linear warmup steps (default 0)")
    o.add_argument("--label-smoothing", type=fraction, help="default 0")

    x = p.add_argument_group("execution")
    x.add_argument("--backend", choices=BACKEND_NAMES, help="numpy (default) or cupy")
    x.add_argument("--dtype", choices=("float32", "float64"), help="default float32")
    x.add_argument("--seed", type=int, help="seeds weights, data order, dropout and augmentation (default 0)")
    x.add_argument("--threads", type=positive_int, help="NumPy: batch shards run side by side (default: one "
                   "per core); dropout masks depend on it, so a resumed run keeps the value it started with")
    x.add_argument("--eval-batch-size", type=positive_int, help="default 256")
    x.add_argument("--out", help="run folder (default runs/<dataset>-<preset>)")
    x.add_argument("--resume", help="continue the run in this folder from its last checkpoint")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def model_config(s: dict[str, Any], num_classes: int) -> ViTConfig:
    """The ViTConfig of a run: the preset, then every model flag that was given."""
    cfg = PRESETS[s["preset"]](num_classes=num_classes)
    dim = s["projection_dim"]
    if dim is not None and s["preset"] != "keras-wide":
        # As in the 2021 example: key_dim = projection_dim, transformer_units = [2 * dim, dim].
        cfg = dataclasses.replace(cfg, dim=dim, key_dim=dim, mlp_units=(2 * dim, dim))
    elif dim is not None:
        cfg = dataclasses.replace(cfg, dim=dim, mlp_units=(2 * dim, dim))
    changes = {field: s[flag] for flag, field in (
        ("image_size", "image_size"), ("patch_size", "patch_size"), ("num_heads", "num_heads"),
        ("key_dim", "key_dim"), ("transformer_layers", "depth"), ("transformer_units", "mlp_units"),
        ("mlp_head_units", "head_units"), ("dropout", "dropout"), ("attention_dropout", "attention_dropout"),
        ("head_dropout", "head_dropout"), ("pool", "pool"), ("gelu", "gelu"),
    ) if s[flag] is not None}
    try:
        return dataclasses.replace(cfg, **changes)
    except ValueError as exc:
        raise UsageError(str(exc).replace("ViTConfig.", "model setting ")) from exc


def resolve_settings(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Merge defaults, a resumed run's settings and the flags given. Returns (settings, resumed config doc)."""
    resume = given.pop("resume", None)
    if resume is None:
        settings = dict(DEFAULTS, **given)
        if settings["out"] is None:
            settings["out"] = str(Path("runs") / f"{settings['dataset']}-{settings['preset']}")
        return settings, None
    config_path = Path(resume) / "config.json"
    if not config_path.is_file():
        raise UsageError(f"--resume {resume}: no run there (expected {config_path}); pass the folder that "
                         "--out named when the run started")
    try:
        doc = json.loads(config_path.read_text())
        saved = doc["run"]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"--resume {resume}: cannot read {config_path} ({exc})") from exc
    # Compare as JSON values: the saved file holds lists where the flags give tuples.
    changed = sorted(k for k in given if k not in RESUMABLE and json.loads(json.dumps(given[k])) != saved.get(k))
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise UsageError(f"cannot change {flags} when resuming; only {', '.join(sorted(RESUMABLE))} may differ. "
                         "Start a new run (--out) to change them.")
    settings = dict(DEFAULTS, **saved)
    settings.update(given)
    settings["out"] = str(Path(resume))
    return settings, doc


# ---- training -----------------------------------------------------------------------------------------------
def stream_seed(seed: int, stream: int, index: int) -> int:
    """A seed for random stream ``stream`` at step or epoch ``index``: pure, so resuming reproduces it."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


SHUFFLE, DROPOUT, AUGMENT = 0, 1, 2


def split_train_val(x: np.ndarray, y: np.ndarray, validation_split: float) -> tuple[np.ndarray, ...]:
    """Keras ``fit(validation_split=f)``: the last f of the data (in dataset order) is validation."""
    split_at = int(math.floor(len(x) * (1.0 - validation_split)))
    return x[:split_at], y[:split_at], x[split_at:], y[split_at:]


def log(message: str) -> None:
    print(message, flush=True)


class Interrupt:
    """Turns the first Ctrl-C into a flag checked between steps, so a checkpoint is never written while the
    parameters are half-updated. A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "Interrupt":
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)",
                  file=sys.stderr, flush=True)

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(settings: dict[str, Any], resumed: dict[str, Any] | None = None,
          on_step: Callable[[int], None] | None = None) -> int:
    """Run (or continue) training as ``settings`` say. Returns the process exit status."""
    s = settings
    out = Path(s["out"])
    backend = get_backend(s["backend"])
    data = load_run_dataset(s, s["data_dir"], s["cache_dir"], s["download"], progress=not s["quiet"])
    cfg = model_config(s, data.num_classes)
    mean, variance = channel_stats(data.x_train)  # Keras adapt(x_train): before the validation split
    x_train, y_train, x_val, y_val = split_train_val(data.x_train, data.y_train, s["validation_split"])
    if s["train_subset"] is not None:
        x_train, y_train = x_train[: s["train_subset"]], y_train[: s["train_subset"]]
    if len(x_train) == 0:
        raise UsageError("no training images left: lower --validation-split or raise --train-subset")

    model = ViT(cfg, backend=backend, dtype=s["dtype"], seed=s["seed"], threads=s["threads"])
    if backend.name == "numpy":
        s["threads"] = model.threads  # record the value used, so that --resume reproduces the run
    opt = AdamW(model.params, lr=s["learning_rate"], weight_decay=s["weight_decay"], epsilon=s["epsilon"],
                decay_convention=s["decay_convention"], clip_norm=s["clip_norm"],
                exclude_from_decay=model.no_decay_names() if s["exclude_from_decay"] else ())
    augmenter = Augmenter(mean, variance, image_size=cfg.image_size, flip=s["flip"], rotation=s["rotation"],
                          zoom=s["zoom"], dtype=s["dtype"])
    steps_per_epoch = math.ceil(len(x_train) / s["batch_size"])  # the last, smaller batch counts (as Keras)
    total_steps = s["epochs"] * steps_per_epoch
    if s["max_steps"] is not None:
        total_steps = min(total_steps, s["max_steps"])

    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_val_top1": None, "best_epoch": None,
             "partial": {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}}
    base_meta = {"model": cfg.to_dict(), "dtype": s["dtype"], "class_names": data.class_names,
                 "normalization": {"mean": mean.tolist(), "variance": variance.tolist()},
                 "run": {k: v for k, v in s.items() if k != "out"}}
    last_path, best_path, metrics_path = out / "last.npz", out / "best.npz", out / "metrics.jsonl"
    if resumed is not None:
        if not last_path.exists():
            raise UsageError(f"{out} has no checkpoint yet (last.npz): the run stopped before its first one; "
                             "start it again without --resume")
        ckpt = load_checkpoint(last_path)
        try:
            model.load_params(ckpt.params)
        except ValueError as exc:
            raise CheckpointError(f"{last_path} does not fit this run's model: {exc}") from exc
        opt.load_state_dict(ckpt.optimizer)
        state = ckpt.meta["state"]
        keep_metric_rows(metrics_path, state["global_step"])
        log(f"resumed {out} at epoch {state['epoch'] + 1}, step {state['global_step']}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        if last_path.exists():
            raise UsageError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
        leftovers = [p.name for p in (best_path, metrics_path, out / "summary.json") if p.exists()]
        if leftovers:
            raise UsageError(f"{out} holds files of an earlier run ({', '.join(leftovers)}) but no last.npz to "
                             "resume from; choose another --out, or move those files away")
    write_json(out / "config.json", base_meta)

    def save(path: Path) -> None:
        save_checkpoint(path, model.params, opt.state_dict(), dict(base_meta, state=state))

    log(f"npvit: {data.name}, {len(x_train)} train / {len(x_val)} validation / {len(data.x_test)} test images, "
        f"{cfg.num_classes} classes; {model.num_params():,} parameters; backend {backend.name} {s['dtype']}; "
        f"batch {s['batch_size']}, {steps_per_epoch} steps per epoch; run folder {out}")

    with Interrupt() as interrupt:
        while state["epoch"] < s["epochs"] and state["global_step"] < total_steps:
            epoch = state["epoch"]
            order = np.random.default_rng(stream_seed(s["seed"], SHUFFLE, epoch)).permutation(len(x_train))
            part = state["partial"]
            bar = ProgressBar(steps_per_epoch, f"epoch {epoch + 1}/{s['epochs']}",
                              enabled=False if s["quiet"] else None)
            start = time.perf_counter() - part["seconds"]
            while state["step_in_epoch"] < steps_per_epoch and state["global_step"] < total_steps:
                i, step = state["step_in_epoch"], state["global_step"]
                idx = order[i * s["batch_size"]:(i + 1) * s["batch_size"]]
                labels = backend.asarray(y_train[idx])
                images = augmenter(backend.asarray(x_train[idx]), training=True,
                                   rng=backend.rng(stream_seed(s["seed"], AUGMENT, step)))
                logits = model.forward(images, training=True, dropout_seed=stream_seed(s["seed"], DROPOUT, step))
                loss, cache = cross_entropy_forward(logits, labels, s["label_smoothing"])
                loss = float(loss)
                if not math.isfinite(loss):
                    bar.close()
                    log(f"error: the loss became {loss} at epoch {epoch + 1}, step {step + 1}; stopping. The last "
                        f"good checkpoint ({last_path}) is unchanged. Try a lower --learning-rate, --clip-norm, "
                        "or --dtype float64.")
                    return 1
                model.backward(cross_entropy_backward(cache))
                opt.lr = learning_rate(step, s["learning_rate"], total_steps, s["warmup_steps"], s["lr_schedule"])
                opt.step(model.grads)

                part["loss_sum"] += loss * len(idx)
                part["correct"] += int((backend.xp.argmax(logits, axis=1) == labels).sum())
                part["seen"] += len(idx)
                state["step_in_epoch"] += 1
                state["global_step"] += 1
                elapsed = time.perf_counter() - start
                part["seconds"] = elapsed
                bar.update(state["step_in_epoch"], loss=part["loss_sum"] / part["seen"],
                           acc=f"{100 * part['correct'] / part['seen']:.2f}%",
                           img_s=f"{part['seen'] / elapsed:.1f}")
                if on_step is not None:
                    on_step(state["global_step"])
                if interrupt.requested:
                    break
            bar.close()
            if interrupt.requested:
                save(last_path)
                log(f"interrupted at epoch {epoch + 1}, step {state['global_step']}: checkpoint saved to "
                    f"{last_path}. Continue with: python -m npvit.train --resume {out}")
                return 130

            # end of the epoch (or of --max-steps): validate, log, keep the best weights
            val = evaluate(model, augmenter, x_val, y_val, s["eval_batch_size"]) if len(x_val) else None
            complete = state["step_in_epoch"] == steps_per_epoch
            row = {"epoch": epoch + 1, "step": state["global_step"], "partial": not complete,
                   "train_loss": part["loss_sum"] / part["seen"], "train_top1": part["correct"] / part["seen"],
                   "lr": opt.lr, "seconds": part["seconds"], "images_per_s": part["seen"] / part["seconds"]}
            if val is not None:
                row.update(val_loss=val.loss, val_top1=val.top1, val_top5=val.top5)
            append_metric_row(metrics_path, row)
            log(format_row(row, s["epochs"]))
            if complete:
                state.update(epoch=epoch + 1, step_in_epoch=0,
                             partial={"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0})
            score = val.top1 if val is not None else -row["train_loss"]  # no validation: lowest train loss
            if state["best_val_top1"] is None or score > state["best_val_top1"]:
                state.update(best_val_top1=score, best_epoch=epoch + 1)
                save(best_path)
            save(last_path)

    return final_test(model, augmenter, data, best_path, out, state, s)


def format_row(row: dict[str, Any], epochs: int) -> str:
    text = (f"epoch {row['epoch']}/{epochs}{' (partial)' if row['partial'] else ''}  "
            f"train loss {row['train_loss']:.4f} top-1 {100 * row['train_top1']:.2f}%")
    if "val_loss" in row:
        text += (f"  val loss {row['val_loss']:.4f} top-1 {100 * row['val_top1']:.2f}% "
                 f"top-5 {100 * row['val_top5']:.2f}%")
    return text + (f"  lr {row['lr']:.2e}  {format_seconds(row['seconds'])} "
                   f"({row['images_per_s']:.1f} images/s)")


def write_json(path: Path, doc: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(doc, indent=2).encode()))


def read_metric_rows(path: Path) -> list[dict[str, Any]]:
    """The metrics log: one JSON object per line, one line per epoch."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_metric_row(path: Path, row: dict[str, Any]) -> None:
    """Rewrite the (small) log atomically with one more row, so a crash never leaves half a line."""
    rows = read_metric_rows(path) + [row]
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def keep_metric_rows(path: Path, up_to_step: int) -> None:
    """On resume, drop rows logged after the checkpoint we continue from (e.g. if a crash came between)."""
    rows = read_metric_rows(path)
    kept = [r for r in rows if r["step"] <= up_to_step]
    if len(kept) != len(rows):
        atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))


def final_test(model: ViT, augmenter: Augmenter, data: Any, best_path: Path, out: Path,
               state: dict[str, Any], s: dict[str, Any]) -> int:
    """Evaluate the best weights on the test split, as the example does, and write summary.json."""
    if best_path.exists():
        best = load_checkpoint(best_path)
        model.load_params(best.params)
    test: EvalResult = evaluate(model, augmenter, data.x_test, data.y_test, s["eval_batch_size"],
                                progress=not s["quiet"], label="test")
    log(f"test ({len(data.y_test)} images, best epoch {state['best_epoch']}): loss {test.loss:.4f}  "
        f"top-1 {100 * test.top1:.2f}%  top-5 {100 * test.top5:.2f}%")
    summary = {"best_epoch": state["best_epoch"], "best_val_top1": state["best_val_top1"],
               "steps": state["global_step"], "test": test.as_dict()}
    write_json(out / "summary.json", summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    try:
        settings, resumed = resolve_settings(given)
        return train(settings, resumed)
    except (UsageError, DataError, CheckpointError, BackendUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the run folder cannot be written, the disk is full, ...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
