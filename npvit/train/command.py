"""The training program of the Keras example "Image classification with Vision Transformer", on npvit.

    python -m npvit.train                                   # the example: CIFAR-100, 100 epochs, NumPy
    python -m npvit.train --backend cupy                    # the same on a GPU
    python -m npvit.train --dataset cifar10 --data-dir ~/cifar-10-binary.tar.gz --preset small --epochs 10
    python -m npvit.train --resume runs/cifar100-keras      # continue an interrupted run

Defaults are the example's: batch 256, AdamW (lr 1e-3, weight decay 1e-4), 10% of the training split (its
last images) held out for validation, flip/rotate/zoom augmentation, the weights with the best validation
accuracy evaluated on the test split at the end. See ``--help`` for every flag.

Exit status: 0 the run finished; 1 it stopped because a loss, gradient or parameter became non-finite
(nothing non-finite is ever saved); 2 bad flags, files or data, not enough memory, or a run folder in use;
130 Ctrl-C (SIGINT) and 143 SIGTERM: the current step was finished and last.npz saved, --resume
continues exactly. A second signal stops at once (a checkpoint being written is then left as it was).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .. import distributed
from . import memory
from ..cli.allocator import keep_freed_memory
from ..data.augment import Augmenter, channel_stats
from ..backend import BackendUnavailableError, get_backend, to_numpy
from ..data.device import DeviceDataset
from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..config import ViTConfig
from ..distributed.communicator import Communicator, SingleProcess
from ..data import DataError, load_run_dataset
from ..distributed.evaluation import evaluate_split
from ..optim.ema import WeightEMA
from ..evaluate import EvalResult, evaluate
from ..files import atomic_write
from ..kernels.cross_entropy import check_labels
from ..model import ViT
from ..optim.adamw import AdamW
from ..parallel import available_cores
from ..cli.progress import ProgressBar, format_seconds
from .folder import MetricsLog, RunFolder
from .state import EpochTotals, RunState
from ..optim.schedule import learning_rate
from ..settings import DEFAULTS, RESUMABLE, UsageError, build_parser as _build_parser, model_config, resolve_settings
from .step import SHUFFLE, RunningSums, StepSettings, stream_seed, train_step

__all__ = ["DEFAULTS", "RESUMABLE", "UsageError", "build_parser", "main", "model_config", "resolve_settings",
           "train"]

EXIT_DONE, EXIT_NONFINITE, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143
READ_SECONDS = 0.5  # how often the loop reads the device's running sums (progress bar, stop and save decisions)


def build_parser() -> argparse.ArgumentParser:
    """The command line (npvit.settings.build_parser), with this program's description and exit statuses."""
    return _build_parser(description=__doc__.splitlines()[0],
                         epilog="Defaults are those of the Keras example. Model flags left out come from --preset."
                                "\n\n" + __doc__[__doc__.index("Exit status"):].strip())


def split_train_val(x: np.ndarray, y: np.ndarray, validation_split: float) -> tuple[np.ndarray, ...]:
    """Keras ``fit(validation_split=f)``: the last f of the data (in dataset order) is validation."""
    split_at = int(math.floor(len(x) * (1.0 - validation_split)))
    return x[:split_at], y[:split_at], x[split_at:], y[split_at:]


def log(message: str) -> None:
    print(message, flush=True)


# ---- stopping -----------------------------------------------------------------------------------------------
class Terminated(BaseException):
    """SIGTERM, raised where the run cannot stop cleanly at a step boundary (like KeyboardInterrupt)."""


class NonFinite(Exception):
    """A loss, gradient or parameter became NaN or infinite; the message says which and when."""


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what Slurm and Kubernetes send before a kill) as requests to stop.

    Inside ``deferred()`` (the training loop), the first signal only sets ``received``, which the loop checks
    between steps: it finishes the step, saves last.npz and exits, so a checkpoint is never written while the
    parameters are half-updated. A second signal, or one outside, raises at once (KeyboardInterrupt for
    SIGINT, Terminated for SIGTERM).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._deferring = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self._deferring and self.received is None:
            self.received = signum
            again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
            print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint ({again} to "
                  "abort)", file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def __enter__(self) -> "StopSignals":
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave the signals alone
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


class ReadSchedule:
    """The steps after which the loop reads the running sums: about every READ_SECONDS.

    The interval is a number of steps, set from the step time measured between reads and agreed by all ranks
    (it comes from reduced values), so that every rank reads, and so takes part in the reduction, at the
    same steps.
    """

    def __init__(self, seconds: float = READ_SECONDS) -> None:
        self.seconds = seconds
        self.next_step = 0

    def start(self, step: int) -> None:
        """A new stretch of steps begins after ``step``: read after its first step, to time it."""
        self.next_step = step + 1

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def update(self, step: int, seconds_per_step: float) -> None:
        self.next_step = step + max(1, min(1000, int(self.seconds / max(seconds_per_step, 1e-6))))


# ---- the run ------------------------------------------------------------------------------------------------
class Run:
    """One training run: its settings, data, model, optimizer, state and folder, and the loop over epochs.

    ``train`` builds one and calls ``loop`` and ``final_test``. Rank 0 alone (``writer``) prints and writes.
    """

    def __init__(self, s: dict[str, Any], comm: Communicator, signals: StopSignals,
                 on_step: Callable[[int], None] | None, recorded_model: Any = None) -> None:
        self.s, self.comm, self.signals, self.on_step = s, comm, signals, on_step
        self.recorded_model = recorded_model  # a resumed run's model, as its config.json recorded it
        self.writer = comm.rank == 0
        self.folder = RunFolder(s["out"])
        self.state = RunState()
        self.last_good: str | None = None  # "path (epoch E, step S)" of the last checkpoint known to be sound
        self.phase = "starting"
        self.bar: ProgressBar | None = None

    def say(self, message: str) -> None:
        if self.writer:
            log(message)

    # ---- setting up ---------------------------------------------------------------------------------------
    def open_folder(self, resuming: bool) -> bool:
        """Lock the run folder and check it fits the request. Returns whether there is a checkpoint to resume."""
        folder = self.folder
        removed = folder.open()
        if removed:
            print(f"note: removed {len(removed)} unfinished temporary file(s) from {folder.path}: "
                  f"{', '.join(removed[:3])}{' ...' if len(removed) > 3 else ''}", file=sys.stderr)
        if resuming:
            if folder.last.exists():
                return True
            self.say(f"{folder.path} has no checkpoint yet (the run stopped before its first one): starting it "
                     "over from step 0 with its saved settings")
            return False
        if folder.last.exists():
            raise UsageError(f"{folder.path} already holds a run; continue it with --resume {folder.path} or "
                             "choose another --out")
        if folder.config.exists():
            raise UsageError(f"{folder.path} holds a run that stopped before its first checkpoint; start it over "
                             f"with --resume {folder.path}, or choose another --out")
        leftovers = folder.earlier_run_files()
        if leftovers:
            raise UsageError(f"{folder.path} holds files of an earlier run ({', '.join(leftovers)}) but no run "
                             "config; choose another --out, or move those files away")
        return False

    def check_dataset_fits(self) -> None:
        """Refuse a synthetic dataset larger than the memory there is, before generating it."""
        s = self.s
        if s["dataset"] != "synthetic":
            return
        nbytes = sum(s["synthetic_size"]) * s["synthetic_image_size"] ** 2 * 3
        available = memory.available_bytes()
        if available is not None and nbytes > available:
            raise UsageError(f"--synthetic-size {s['synthetic_size'][0]},{s['synthetic_size'][1]} of "
                             f"{s['synthetic_image_size']}x{s['synthetic_image_size']} images needs "
                             f"{memory.describe(nbytes)}; {memory.describe(available)} of memory is available")

    def check_step_fits(self, resuming: bool) -> None:
        """Refuse a step that cannot fit in memory, saying what batch size would."""
        s, cfg = self.s, self.cfg
        if self.backend.name != "numpy":
            available = self.backend.device_free_bytes()
            threads = 1
        else:
            available = memory.available_bytes()
            threads = s["threads"] or available_cores()
        estimate = memory.training_step(cfg, np.dtype(s["dtype"]).itemsize, threads, ema=s["ema"] is not None)
        batch = min(s["batch_size"], len(self.x_train))
        local = -(-batch // self.comm.size)  # the images of the largest slice a rank takes
        if available is None or estimate.total(local) <= available:
            return
        fits = estimate.largest_batch(available) * self.comm.size
        need = (f"a training step of this model at batch {batch} needs about "
                f"{memory.describe(estimate.total(local))}{' per process' if self.comm.size > 1 else ''}, and "
                f"{memory.describe(available)} of memory is available")
        if fits == 0:
            raise UsageError(f"{need}; the model alone needs {memory.describe(estimate.total(0))}: choose a "
                             "smaller model (--preset, --projection-dim, --mlp-head-units) or a larger machine")
        if resuming:
            raise UsageError(f"{need} (batch {fits} would fit, but a resumed run keeps its batch size): free "
                             "memory, or move the run to a larger machine")
        raise UsageError(f"{need}; --batch-size {fits} would fit")

    def setup(self, resuming: bool) -> None:
        """Open the run folder, load the data, build the model and optimizer, restore the checkpoint if any."""
        try:
            self._setup(resuming)
        except BaseException:
            self.folder.discard()  # a refused new run leaves no folder behind
            raise

    def _setup(self, resuming: bool) -> None:
        s, comm = self.s, self.comm
        # Rank 0 locks the folder; the others only look (they share its filesystem).
        has_checkpoint = self.open_folder(resuming) if self.writer else resuming and self.folder.last.exists()
        self.backend = get_backend(s["backend"])
        self.check_dataset_fits()
        self.phase = "loading the dataset"
        # One process per cache folder at a time: rank 0 first (it may download), then the others.
        data = distributed.in_waves(comm, lambda: load_run_dataset(
            s, s["data_dir"], s["cache_dir"], s["download"], progress=not s["quiet"] and self.writer))
        self.data = data
        # A resumed run keeps the model it recorded, even if its preset has been changed since.
        self.cfg = cfg = (model_config(s, data.num_classes) if self.recorded_model is None
                          else recorded_config(self.recorded_model, self.folder.config))
        check_labels(data.y_train, data.num_classes)  # once, on the host
        mean, variance = channel_stats(data.x_train)  # Keras adapt(x_train): before the validation split
        x_train, y_train, x_val, y_val = split_train_val(data.x_train, data.y_train, s["validation_split"])
        if s["train_subset"] is not None:
            x_train, y_train = x_train[: s["train_subset"]], y_train[: s["train_subset"]]
        if len(x_train) == 0:
            raise UsageError("no training images left: lower --validation-split or raise --train-subset")
        self.x_train, self.y_train, self.x_val, self.y_val = x_train, y_train, x_val, y_val
        self.check_step_fits(resuming and has_checkpoint)

        self.phase = "building the model"
        # Threads change nothing in the results (dropout is keyed by image): a run resumed on another number of
        # processes takes its own share of the cores.
        self.model = model = ViT(cfg, backend=self.backend, dtype=s["dtype"], seed=s["seed"],
                                 threads=s["threads"] or distributed.threads_per_process(comm))
        self.opt = AdamW(model.params, lr=s["learning_rate"], weight_decay=s["weight_decay"], epsilon=s["epsilon"],
                         decay_convention=s["decay_convention"], clip_norm=s["clip_norm"],
                         exclude_from_decay=model.no_decay_names() if s["exclude_from_decay"] else ())
        # --ema: the moving average of the weights, validated and tested; nothing allocated without it.
        self.ema = WeightEMA(model.params, s["ema"]) if s["ema"] is not None else None
        self.augmenter = Augmenter(mean, variance, image_size=cfg.image_size, flip=s["flip"], rotation=s["rotation"],
                                   zoom=s["zoom"], crop_padding=s["crop_padding"],
                                   trivial_augment=s["trivial_augment"],
                                   trivial_augment_prob=s["trivial_augment_prob"], dtype=s["dtype"])
        # The training images on the device once (CIFAR's 50,000 are 150 MB of uint8), each batch gathered
        # there; on NumPy the same host arrays.
        self.train_data = DeviceDataset(self.backend, x_train, y_train)
        self.steps_per_epoch = math.ceil(len(x_train) / s["batch_size"])  # the last, smaller batch counts (Keras)
        self.total_steps = s["epochs"] * self.steps_per_epoch
        if s["max_steps"] is not None:
            self.total_steps = min(self.total_steps, s["max_steps"])
        self.base_meta = {"model": cfg.to_dict(), "dtype": s["dtype"], "class_names": data.class_names,
                          "normalization": {"mean": mean.tolist(), "variance": variance.tolist()},
                          "run": {k: v for k, v in s.items() if k != "out"}}
        if has_checkpoint:
            self.restore()
        if self.writer:
            self.metrics = MetricsLog.resume(self.folder.metrics, self.state.global_step)
            write_json(self.folder.config, self.base_meta)
        comm.barrier()

    def restore(self) -> None:
        """Continue from last.npz: weights, AdamW state, the EMA of the weights (with --ema) and RunState,
        each checked against this run."""
        path = self.folder.last
        ckpt = load_checkpoint(path)
        if "state" not in ckpt.meta:
            raise CheckpointError(f"{path} has no training state (no 'state' in its meta): it was not written by "
                                  "npvit.train, so it cannot be resumed; evaluate it with npvit.evaluate instead")
        state = RunState.from_dict(ckpt.meta["state"], str(path))
        for name, arrays in (("parameters", ckpt.params), ("optimizer state", ckpt.optimizer),
                             ("EMA weights", ckpt.ema)):
            bad = sorted(k for k, a in arrays.items() if a.dtype.kind in "fc" and not np.isfinite(a).all())
            if bad:
                raise CheckpointError(f"{path} holds non-finite {name} ({', '.join(bad[:3])}); it cannot be "
                                      "resumed. Start a new run with --out.")
        try:
            self.model.load_params(ckpt.params)
            self.opt.load_state_dict(ckpt.optimizer)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path} does not fit this run's model: {exc}") from None
        if self.ema is not None:
            if not ckpt.ema:
                raise CheckpointError(f"{path} holds no EMA weights (no ema/ entries) but this run keeps an EMA "
                                      f"(--ema {self.s['ema']}): it was not written by this run, or was changed")
            try:
                self.ema.load_state_dict(ckpt.ema)
            except ValueError as exc:
                raise CheckpointError(f"{path}: {exc}; the checkpoint is damaged or belongs to another run") \
                    from None
        state.check_fits(self.steps_per_epoch, self.s["batch_size"], len(self.x_train), self.opt.step_count, str(path))
        self.state = state
        self.last_good = f"{path} ({state.where()})"
        self.say(f"resumed {self.folder.path} at epoch {state.epoch + 1}, step {state.global_step}")

    # ---- checkpoints --------------------------------------------------------------------------------------
    def host_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """Parameters, AdamW state and the EMA weights (None without --ema) on the host, or NonFinite if any
        value is NaN or infinite."""
        params = {k: to_numpy(v) for k, v in self.model.params.items()}
        opt_state = self.opt.state_dict()
        ema = self.ema.state_dict() if self.ema is not None else None
        every = (*params.items(), *opt_state.items(), *((f"ema/{k}", a) for k, a in (ema or {}).items()))
        bad = [k for k, a in every if a.dtype.kind == "f" and not np.isfinite(a).all()]
        if bad:
            what = "the parameters or AdamW moments" + (" or EMA weights" if ema is not None else "")
            raise NonFinite(f"{what} became non-finite ({', '.join(bad[:3])}) in an update up to step "
                            f"{self.state.global_step}")
        return params, opt_state, ema

    def save(self, paths: list[Path], arrays: tuple[dict, dict, dict | None] | None = None) -> None:
        """Write the current weights, AdamW state and RunState to ``paths`` (best.npz before last.npz).
        ``arrays`` are host_arrays() when the caller has them already.

        With --ema, best.npz holds the EMA weights as its parameters (what the final test and npvit.evaluate
        use) and no optimizer state (AdamW's moments belong to the raw weights), and last.npz the raw weights,
        their AdamW state and, under ema/, the EMA weights, so that --resume continues both."""
        params, opt_state, ema = arrays or self.host_arrays()  # on every rank: they all stop if it fails
        if not self.writer:
            return
        self.phase = "saving a checkpoint"
        meta = dict(self.base_meta, state=self.state.to_dict())
        for path in paths:
            if ema is not None and path == self.folder.best:
                save_checkpoint(path, ema, {}, dict(meta, weights="ema"))
            else:
                save_checkpoint(path, params, opt_state, meta, ema=ema)
        self.last_good = f"{self.folder.last} ({self.state.where()})"

    # ---- the loop -----------------------------------------------------------------------------------------
    def loop(self) -> int | None:
        """Train until the epochs or --max-steps are done. Returns an exit status to stop with, or None to go
        on to the final test."""
        s, st, comm, xp = self.s, self.state, self.comm, self.backend.xp
        step_settings = StepSettings(seed=s["seed"], label_smoothing=s["label_smoothing"], mixup=s["mixup"],
                                     cutmix=s["cutmix"])
        schedule = ReadSchedule()
        save_every = None if s["save_every"] is None else 60.0 * s["save_every"]
        last_save = time.perf_counter()
        bar_enabled = not s["quiet"] and self.writer and sys.stderr.isatty()
        while st.epoch < s["epochs"] and st.global_step < self.total_steps:
            epoch, part = st.epoch, st.partial
            order = np.random.default_rng(stream_seed(s["seed"], SHUFFLE, epoch)).permutation(len(self.x_train))
            # The resumed totals count once: on rank 0.
            sums = RunningSums(xp, part.loss_sum, part.correct) if self.writer else RunningSums(xp)
            self.bar = bar = ProgressBar(self.steps_per_epoch, f"epoch {epoch + 1}/{s['epochs']}",
                                         enabled=bar_enabled, start=st.step_in_epoch)
            start = time.perf_counter() - part.seconds
            schedule.start(st.global_step)
            last_read = (time.perf_counter(), st.global_step)
            self.phase = "training"
            while st.step_in_epoch < self.steps_per_epoch and st.global_step < self.total_steps:
                i, step = st.step_in_epoch, st.global_step
                batch = order[i * s["batch_size"]:(i + 1) * s["batch_size"]]
                lr = learning_rate(step, s["learning_rate"], self.total_steps, s["warmup_steps"], s["lr_schedule"])
                train_step(self.model, self.opt, self.augmenter, self.train_data.images, self.train_data.labels,
                           batch, step, lr, step_settings, sums, comm, ema=self.ema)
                st.step_in_epoch += 1
                st.global_step += 1
                part.seen += len(batch)
                part.seconds = time.perf_counter() - start
                if self.on_step is not None:
                    self.on_step(st.global_step)
                save_due = save_every is not None and time.perf_counter() - last_save >= save_every
                # One process answers a signal or a due save at once; several agree on them at read points.
                if not (schedule.due(st.global_step)
                        or (comm.size == 1 and (self.signals.received is not None or save_due))):
                    continue
                now = time.perf_counter()
                stop_int, stop_term, save_due, mean_seconds = self.read(
                    sums, save_due, (now - last_read[0]) / max(1, st.global_step - last_read[1]))
                last_read = (now, st.global_step)
                schedule.update(st.global_step, mean_seconds)
                bar.update(st.step_in_epoch, loss=part.loss, acc=f"{100 * part.top1:.2f}%",
                           img_s=f"{part.seen / max(part.seconds, 1e-9):.1f}")
                if stop_int or stop_term:
                    bar.close()
                    self.save([self.folder.last])
                    self.say(f"interrupted at epoch {epoch + 1}, step {st.global_step}: checkpoint saved to "
                             f"{self.folder.last}. Continue with: python -m npvit.train --resume {self.folder.path}")
                    return EXIT_SIGTERM if stop_term else EXIT_SIGINT
                if save_due:
                    self.save([self.folder.last])
                    last_save = time.perf_counter()
            bar.close()
            self.read(sums, False, 0.0)  # the epoch's totals, and the last check for non-finite values
            self.end_epoch(epoch)
            last_save = time.perf_counter()
            # A signal during validation or saving: last.npz is new, so stop here rather than a step later.
            stop_int, stop_term = self.comm.allreduce_scalars([self.signals.received == signal.SIGINT,
                                                               self.signals.received == signal.SIGTERM])
            if stop_int or stop_term:
                self.say(f"interrupted after epoch {epoch + 1}, step {st.global_step}: checkpoint saved to "
                         f"{self.folder.last}. Continue with: python -m npvit.train --resume {self.folder.path}")
                return EXIT_SIGTERM if stop_term else EXIT_SIGINT
        return None

    def read(self, sums: RunningSums, save_due: bool, seconds_per_step: float) -> tuple[bool, bool, bool, float]:
        """Read the running sums into the RunState (one device-to-host transfer) and agree with the other ranks
        on whether to stop or save. Raises NonFinite if a step since the epoch began was not finite.
        Returns (SIGINT received, SIGTERM received, save due, mean seconds per step)."""
        loss_sum, correct, nonfinite, first = sums.read()
        received = self.signals.received
        totals = self.comm.allreduce_scalars([
            loss_sum, correct, nonfinite, received == signal.SIGINT, received == signal.SIGTERM, save_due,
            seconds_per_step])
        if totals[2]:
            where = f"step {first + 1}" if first >= 0 else "a step"
            raise NonFinite(f"the loss or the gradient became non-finite (NaN or infinite) at {where}")
        self.state.partial.loss_sum, self.state.partial.correct = totals[0], int(totals[1])
        return bool(totals[3]), bool(totals[4]), bool(totals[5]), totals[6] / self.comm.size

    def end_epoch(self, epoch: int) -> None:
        """Validate, log the epoch's row, keep the best weights, save last.npz.

        With --ema the EMA weights are validated too: their numbers are the row's val_loss, val_top1 and
        val_top5 (and choose best.npz), the raw weights' are val_loss_raw, val_top1_raw and val_top5_raw."""
        s, st = self.s, self.state
        arrays = self.host_arrays()  # the last update's result is checked before anything is evaluated or logged
        self.phase = "validating"
        val = raw = None
        if len(self.x_val):
            raw = val = self.validate()
            if self.ema is not None:
                with self.ema.applied_to(self.model.params):
                    val = self.validate()
        for result, which in ((raw, ""), (val, "EMA ")):
            if result is not None and not math.isfinite(result.loss):
                raise NonFinite(f"the {which}validation loss became {result.loss} after step {st.global_step}")
        part = st.partial
        complete = st.step_in_epoch == self.steps_per_epoch
        row = {"epoch": epoch + 1, "step": st.global_step, "partial": not complete,
               "train_loss": part.loss, "train_top1": part.top1, "lr": self.opt.lr, "seconds": part.seconds,
               "images_per_s": part.seen / max(part.seconds, 1e-9)}
        if val is not None:
            row.update(val_loss=val.loss, val_top1=val.top1, val_top5=val.top5)
        if raw is not None and self.ema is not None:
            row.update(val_loss_raw=raw.loss, val_top1_raw=raw.top1, val_top5_raw=raw.top5)
        if self.writer:
            self.metrics.append(row)
        self.say(format_row(row, s["epochs"]))
        if complete:
            st.epoch, st.step_in_epoch, st.partial = epoch + 1, 0, EpochTotals()
        score = val.top1 if val is not None else -row["train_loss"]  # no validation: lowest train loss
        paths = [self.folder.last]
        if st.best_score is None or score > st.best_score:
            st.best_score, st.best_epoch = score, epoch + 1
            paths.insert(0, self.folder.best)
        self.save(paths, arrays)

    def validate(self) -> EvalResult:
        """The model's current weights on the validation split."""
        return evaluate_split(self.comm, self.model, self.augmenter, self.x_val, self.y_val,
                              self.s["eval_batch_size"], evaluate=evaluate, flip=self.s["eval_flip"])

    def final_test(self) -> int:
        """Evaluate the best weights (with --ema: the EMA weights best.npz holds) on the test split, as the
        example does, and write summary.json."""
        s, st, data = self.s, self.state, self.data
        self.phase = "testing"
        self.comm.barrier()  # rank 0 has written best.npz
        weights = nullcontext()
        if not self.folder.best.exists() and self.ema is not None:  # none saved: the current EMA weights
            weights = self.ema.applied_to(self.model.params)
        if self.folder.best.exists():
            best = load_checkpoint(self.folder.best)
            try:
                self.model.load_params(best.params)
            except (ValueError, TypeError) as exc:
                raise CheckpointError(f"{self.folder.best} does not fit this run's model: {exc}") from None
        with weights:
            test: EvalResult = evaluate_split(self.comm, self.model, self.augmenter, data.x_test, data.y_test,
                                              s["eval_batch_size"], progress=not s["quiet"] and self.writer,
                                              label="test", evaluate=evaluate, flip=s["eval_flip"])
        self.say(f"test ({len(data.y_test)} images, best epoch {st.best_epoch}"
                 f"{', EMA weights' if self.ema is not None else ''}"
                 f"{', test-time flip' if s['eval_flip'] else ''}): loss {test.loss:.4f}  "
                 f"top-1 {100 * test.top1:.2f}%  top-5 {100 * test.top5:.2f}%")
        if self.writer:
            summary = {"best_epoch": st.best_epoch, "best_val_top1": st.best_score if len(self.x_val) else None,
                       "steps": st.global_step,
                       "test": {k: v if math.isfinite(v) else None for k, v in test.as_dict().items()}}
            if self.ema is not None:
                summary["weights"] = "ema"  # the test is of the moving average of the weights
            if s["eval_flip"]:
                summary["eval_flip"] = True  # the test scored each image with its mirror image
            write_json(self.folder.summary, summary)
        return EXIT_DONE


def recorded_config(doc: Any, source: Path) -> ViTConfig:
    """The model config a run recorded in its config.json, or UsageError saying the file is damaged."""
    try:
        if not isinstance(doc, dict):
            raise TypeError(f"a JSON {type(doc).__name__}, not an object")
        return ViTConfig.from_dict(doc)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{source}: its \"model\" entry is not a model config ({str(exc)[:160]}); the file is "
                         "damaged or was edited by hand") from None


def train(settings: dict[str, Any], resumed: dict[str, Any] | None = None,
          on_step: Callable[[int], None] | None = None, comm: Communicator | None = None) -> int:
    """Run (or continue) training as ``settings`` say. Returns the process exit status.

    ``resumed`` is the run's config.json when continuing (resolve_settings returns both); ``on_step`` is
    called with the global step after every optimizer step; ``comm`` connects the ranks of a data-parallel
    run (default: this process alone).
    """
    run = Run(dict(settings), comm or SingleProcess(), StopSignals(), on_step,
              recorded_model=resumed.get("model") if resumed is not None else None)
    with run.signals, run.folder:
        try:
            run.setup(resumed is not None)
            run.say(f"npvit: {run.data.name}, {len(run.x_train)} train / {len(run.x_val)} validation / "
                    f"{len(run.data.x_test)} test images, {run.cfg.num_classes} classes; "
                    f"{run.model.num_params():,} parameters; backend {run.backend.name} {run.s['dtype']}; "
                    f"batch {run.s['batch_size']}, {run.steps_per_epoch} steps per epoch; "
                    + (f"EMA of the weights, decay {run.s['ema']:g}; " if run.ema is not None else "")
                    + (f"{run.comm.size} processes ({getattr(run.comm, 'name', 'data parallel')}); "
                       if run.comm.size > 1 else "")
                    + f"run folder {run.folder.path}")
            with run.signals.deferred():
                status = run.loop()
            if status is not None:
                return status
        except NonFinite as exc:
            if run.bar is not None:
                run.bar.close()
            last = f"the last good checkpoint is {run.last_good}" if run.last_good else \
                "no checkpoint was written (the run stopped before its first one)"
            if run.writer:
                print(f"error: {exc}; stopping. Nothing non-finite was saved: {last}. Start a new run (--out) with "
                      "a lower --learning-rate, --clip-norm, or --dtype float64.", file=sys.stderr, flush=True)
            return EXIT_NONFINITE
        except MemoryError:
            raise UsageError(out_of_memory_advice(run)) from None
        try:
            return run.final_test()
        except (KeyboardInterrupt, Terminated) as exc:
            run.say(f"\nthe test evaluation was interrupted; training is complete and saved in {run.folder.path}. "
                    f"Evaluate with: python -m npvit.train --resume {run.folder.path}")
            return EXIT_SIGINT if isinstance(exc, KeyboardInterrupt) else EXIT_SIGTERM
        except MemoryError:
            raise UsageError(out_of_memory_advice(run)) from None


def out_of_memory_advice(run: Run) -> str:
    """What ran out of memory, and what to change."""
    s = run.s
    where = f"out of memory while {run.phase}"
    if run.phase in ("validating", "testing"):
        return f"{where}; lower --eval-batch-size (now {s['eval_batch_size']})"
    if run.phase != "training" or not hasattr(run, "cfg"):
        return f"{where}; free memory or use a larger machine"
    estimate = memory.training_step(run.cfg, np.dtype(s["dtype"]).itemsize,
                                    getattr(run.model, "threads", 1) if hasattr(run, "model") else 1,
                                    ema=s["ema"] is not None)
    size = run.comm.size if hasattr(run, "comm") else 1
    local = -(-s["batch_size"] // size)  # the images of the largest slice a process takes
    return (f"{where} (a step at batch {s['batch_size']} needs about {memory.describe(estimate.total(local))}"
            f"{' per process' if size > 1 else ''} by npvit's estimate); free memory, or start a "
            f"new run with a lower --batch-size, e.g. {max(1, s['batch_size'] // 2)}. "
            + (f"The last checkpoint is {run.last_good}." if run.last_good else "No checkpoint was written."))


def format_row(row: dict[str, Any], epochs: int) -> str:
    text = (f"epoch {row['epoch']}/{epochs}{' (partial)' if row['partial'] else ''}  "
            f"train loss {row['train_loss']:.4f} top-1 {100 * row['train_top1']:.2f}%")
    if "val_loss" in row:
        text += (f"  val loss {row['val_loss']:.4f} top-1 {100 * row['val_top1']:.2f}% "
                 f"top-5 {100 * row['val_top5']:.2f}%")
    if "val_top1_raw" in row:
        text += f" (EMA; raw weights: loss {row['val_loss_raw']:.4f} top-1 {100 * row['val_top1_raw']:.2f}%)"
    return text + (f"  lr {row['lr']:.2e}  {format_seconds(row['seconds'])} "
                   f"({row['images_per_s']:.1f} images/s)")


def write_json(path: Path, doc: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(doc, indent=2).encode()))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    try:
        comm = distributed.connect()  # this process alone, unless mpiexec or srun started several
    except distributed.DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with distributed.stop_all_on_error(comm):
        status, message = run_command(given, comm)
        if message is not None and comm.size > 1:
            distributed.fail(comm, message.strip(), status)  # it may have happened on this rank alone
        if message is not None:
            print(message, file=sys.stderr)
        return status


def run_command(given: dict[str, Any], comm: distributed.Communicator) -> tuple[int, str | None]:
    """Resolve the settings and train. Returns the exit status and, for an expected error, its message."""
    try:
        settings, resumed = resolve_settings(given)
        if settings["backend"] == "numpy":
            keep_freed_memory()  # a third faster on small models: freed arrays are not page-faulted back in
        distributed.check_batch_size(settings["batch_size"], comm.size)
        comm = distributed.for_backend(comm, settings["backend"])  # GPUs: this rank's device, before any use
        if comm.size == 1:
            return train(settings, resumed), None  # one process: the call it always was
        return train(settings, resumed, comm=comm), None
    except (UsageError, DataError, CheckpointError, BackendUnavailableError, distributed.DistributedError) as exc:
        return EXIT_USAGE, f"error: {exc}"
    except OSError as exc:  # the run folder cannot be written, the disk is full, ...
        return EXIT_USAGE, f"error: {exc}"
    except MemoryError:
        return EXIT_USAGE, "error: out of memory; free memory, or lower --batch-size"
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        return EXIT_SIGINT, "\ninterrupted"
    except Terminated:
        return EXIT_SIGTERM, "\nterminated (SIGTERM)"

