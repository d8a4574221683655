"""The epoch loop: steps, reads of the running sums, validation, checkpoints, and the final test.

Every step's learning rate is set here (``optim.schedule.learning_rate``); the step itself is
``npvit.train.step.train_step``. Signals are answered between steps: the step finishes and last.npz is saved.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from typing import Any

import numpy as np

from ..checkpoint import CheckpointError, load_checkpoint
from ..cli.progress import ProgressBar, format_seconds
from ..cli.status import INTERRUPTED, OK, TERMINATED
from ..evaluate import EvalResult, describe_views
from ..optim.schedule import learning_rate
from .evaluation import evaluate_split
from .state import EpochTotals
from .graph import CapturedStep, check_cuda_graph
from .step import SHUFFLE, RunningSums, StepSettings, stream_seed, train_step
from .trainer import NonFinite, Trainer, write_json

READ_SECONDS = 0.5  # how often the loop reads the device's running sums (progress bar, stop and save decisions)


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


# ---- the loop -----------------------------------------------------------------------------------------
def run_epochs(t: Trainer) -> int | None:
    """Train until the epochs or --max-steps are done. Returns an exit status to stop with, or None to go
    on to the final test."""
    s, st, comm, xp = t.s, t.state, t.comm, t.backend.xp
    step_settings = StepSettings(seed=s["seed"], label_smoothing=s["label_smoothing"], mixup=s["mixup"],
                                 cutmix=s["cutmix"])
    schedule = ReadSchedule()
    captured = None
    if s.get("cuda_graph"):  # refused where it cannot be captured (the command checked before; train() may not)
        check_cuda_graph(s, comm.size)
        captured = CapturedStep(t.model, t.opt, t.ema, s["batch_size"])
    save_every = None if s["save_every"] is None else 60.0 * s["save_every"]
    last_save = time.perf_counter()
    bar_enabled = not s["quiet"] and t.writer and sys.stderr.isatty()
    while st.epoch < s["epochs"] and st.global_step < t.total_steps:
        epoch, part = st.epoch, st.partial
        order = np.random.default_rng(stream_seed(s["seed"], SHUFFLE, epoch)).permutation(len(t.x_train))
        # The resumed totals count once: on rank 0.
        sums = RunningSums(xp, part.loss_sum, part.correct) if t.writer else RunningSums(xp)
        t.bar = bar = ProgressBar(t.steps_per_epoch, f"epoch {epoch + 1}/{s['epochs']}",
                                     enabled=bar_enabled, start=st.step_in_epoch)
        start = time.perf_counter() - part.seconds
        schedule.start(st.global_step)
        last_read = (time.perf_counter(), st.global_step)
        t.phase = "training"
        while st.step_in_epoch < t.steps_per_epoch and st.global_step < t.total_steps:
            i, step = st.step_in_epoch, st.global_step
            batch = order[i * s["batch_size"]:(i + 1) * s["batch_size"]]
            t.opt.lr = learning_rate(step, s["learning_rate"], t.total_steps, s["warmup_steps"], s["lr_schedule"])
            if captured is not None:  # --cuda-graph: the model's part launched as one CUDA graph
                captured(t.augmenter, t.train_data, batch, step, step_settings, sums)
            else:
                train_step(t.model, t.opt, t.augmenter, t.train_data,
                           batch, step, step_settings, sums, comm, ema=t.ema)
            st.step_in_epoch += 1
            st.global_step += 1
            part.seen += len(batch)
            part.seconds = time.perf_counter() - start
            if t.tensorboard is not None:
                t.tensorboard.step(step, t.opt.lr)
            if t.on_step is not None:
                t.on_step(st.global_step)
            save_due = save_every is not None and time.perf_counter() - last_save >= save_every
            # One process answers a signal or a due save at once; several agree on them at read points.
            if not (schedule.due(st.global_step)
                    or (comm.size == 1 and (t.signals.received is not None or save_due))):
                continue
            now = time.perf_counter()
            stop_int, stop_term, save_due, mean_seconds = read(t, 
                sums, save_due, (now - last_read[0]) / max(1, st.global_step - last_read[1]))
            last_read = (now, st.global_step)
            schedule.update(st.global_step, mean_seconds)
            bar.update(st.step_in_epoch, loss=part.loss, acc=f"{100 * part.top1:.2f}%",
                       img_s=f"{part.seen / max(part.seconds, 1e-9):.1f}")
            if stop_int or stop_term:
                bar.close()
                t.save([t.folder.last])
                t.say(f"interrupted at epoch {epoch + 1}, step {st.global_step}: checkpoint saved to "
                         f"{t.folder.last}. Continue with: python -m npvit.train --resume {t.folder.path}")
                return TERMINATED if stop_term else INTERRUPTED
            if save_due:
                t.save([t.folder.last])
                last_save = time.perf_counter()
        bar.close()
        read(t, sums, False, 0.0)  # the epoch's totals, and the last check for non-finite values
        end_epoch(t, epoch)
        last_save = time.perf_counter()
        # A signal during validation or saving: last.npz is new, so stop here rather than a step later.
        stop_int, stop_term = t.comm.allreduce_scalars([t.signals.received == signal.SIGINT,
                                                           t.signals.received == signal.SIGTERM])
        if stop_int or stop_term:
            t.say(f"interrupted after epoch {epoch + 1}, step {st.global_step}: checkpoint saved to "
                     f"{t.folder.last}. Continue with: python -m npvit.train --resume {t.folder.path}")
            return TERMINATED if stop_term else INTERRUPTED
    return None

def read(t: Trainer, sums: RunningSums, save_due: bool, seconds_per_step: float) -> tuple[bool, bool, bool, float]:
    """Read the running sums into the RunState (one device-to-host transfer) and agree with the other ranks
    on whether to stop or save. Raises NonFinite if a step since the epoch began was not finite.
    Returns (SIGINT received, SIGTERM received, save due, mean seconds per step)."""
    loss_sum, correct, nonfinite, first = sums.read()
    received = t.signals.received
    totals = t.comm.allreduce_scalars([
        loss_sum, correct, nonfinite, received == signal.SIGINT, received == signal.SIGTERM, save_due,
        seconds_per_step])
    if totals[2]:
        where = f"step {first + 1}" if first >= 0 else "a step"
        raise NonFinite(f"the loss or the gradient became non-finite (NaN or infinite) at {where}")
    t.state.partial.loss_sum, t.state.partial.correct = totals[0], int(totals[1])
    return bool(totals[3]), bool(totals[4]), bool(totals[5]), totals[6] / t.comm.size

def end_epoch(t: Trainer, epoch: int) -> None:
    """Validate, log the epoch's row, keep the best weights, save last.npz.

    With --ema the EMA weights are validated too: their numbers are the row's val_loss, val_top1 and
    val_top5 (and choose best.npz), the raw weights' are val_loss_raw, val_top1_raw and val_top5_raw."""
    s, st = t.s, t.state
    arrays = t.host_arrays()  # the last update's result is checked before anything is evaluated or logged
    t.phase = "validating"
    val = raw = None
    if len(t.x_val):
        raw = val = t.validate()
        if t.ema is not None:
            with t.ema.applied_to(t.model.params):
                val = t.validate()
    for result, which in ((raw, ""), (val, "EMA ")):
        if result is not None and not math.isfinite(result.loss):
            raise NonFinite(f"the {which}validation loss became {result.loss} after step {st.global_step}")
    part = st.partial
    complete = st.step_in_epoch == t.steps_per_epoch
    row = {"epoch": epoch + 1, "step": st.global_step, "partial": not complete,
           "train_loss": part.loss, "train_top1": part.top1, "lr": t.opt.lr, "seconds": part.seconds,
           "images_per_s": part.seen / max(part.seconds, 1e-9)}
    if val is not None:
        row.update(val_loss=val.loss, val_top1=val.top1, val_top5=val.top5)
    if raw is not None and t.ema is not None:
        row.update(val_loss_raw=raw.loss, val_top1_raw=raw.top1, val_top5_raw=raw.top5)
    if t.writer:
        t.metrics.append(row)
        if t.tensorboard is not None:
            t.tensorboard.epoch(row)
    t.say(format_row(row, s["epochs"]))
    if complete:
        st.epoch, st.step_in_epoch, st.partial = epoch + 1, 0, EpochTotals()
    score = val.top1 if val is not None else -row["train_loss"]  # no validation: lowest train loss
    paths = [t.folder.last]
    if st.best_score is None or score > st.best_score:
        st.best_score, st.best_epoch = score, epoch + 1
        paths.insert(0, t.folder.best)
    t.save(paths, arrays)

def final_test(t: Trainer) -> int:
    """Evaluate the best weights (with --ema: the EMA weights best.npz holds) on the test split, as the
    example does, and write summary.json."""
    s, st, data = t.s, t.state, t.data
    t.phase = "testing"
    t.comm.barrier()  # rank 0 has written best.npz
    weights = nullcontext()
    if not t.folder.best.exists() and t.ema is not None:  # none saved: the current EMA weights
        weights = t.ema.applied_to(t.model.params)
    if t.folder.best.exists():
        best = load_checkpoint(t.folder.best)
        try:
            t.model.load_params(best.params)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{t.folder.best} does not fit this run's model: {exc}") from None
    with weights:
        test: EvalResult = evaluate_split(t.comm, t.model, t.augmenter, data.x_test, data.y_test,
                                          s["eval_batch_size"], progress=not s["quiet"] and t.writer,
                                          label="test", flip=s["eval_flip"], shift=s["eval_shift"])
    t.say(f"test ({len(data.y_test)} images, best epoch {st.best_epoch}"
             f"{', EMA weights' if t.ema is not None else ''}"
             f"{describe_views(s['eval_flip'], s['eval_shift'])}): loss {test.loss:.4f}  "
             f"top-1 {100 * test.top1:.2f}%  top-5 {100 * test.top5:.2f}%")
    if t.writer:
        summary = {"best_epoch": st.best_epoch, "best_val_top1": st.best_score if len(t.x_val) else None,
                   "steps": st.global_step,
                   "test": {k: v if math.isfinite(v) else None for k, v in test.as_dict().items()}}
        if t.ema is not None:
            summary["weights"] = "ema"  # the test is of the moving average of the weights
        if s["eval_flip"]:
            summary["eval_flip"] = True  # the test scored each image with its mirror image
        if s["eval_shift"]:
            summary["eval_shift"] = s["eval_shift"]  # and with its shifted views
        write_json(t.folder.summary, summary)
    return OK


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
