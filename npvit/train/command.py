"""The training program of the Keras example "Image classification with Vision Transformer", on npvit.

    python -m npvit.train                                   # the example: CIFAR-100, 100 epochs, NumPy
    python -m npvit.train --backend cupy                    # the same on a GPU
    python -m npvit.train --dataset cifar10 --data-dir ~/cifar-10-binary.tar.gz --preset small --epochs 10
    python -m npvit.train --resume runs/cifar100-keras      # continue an interrupted run

Defaults are the example's: batch 256, AdamW (lr 1e-3, weight decay 1e-4), 10% of the training split (its
last images) held out for validation, flip/rotate/zoom augmentation, the weights with the best validation
accuracy evaluated on the test split at the end. See ``--help`` for every flag.

Exit status (npvit.cli.status, the same for every npvit command): 0 the run finished; 1 it stopped because a
loss, gradient or parameter became non-finite (nothing non-finite is ever saved); 2 bad flags, files or data,
or a run folder in use; 3 not enough memory; 130 Ctrl-C (SIGINT) and 143 SIGTERM: the current step was
finished and last.npz saved, --resume continues exactly. A second signal stops at once (a checkpoint being
written is then left as it was).
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from .. import distributed
from ..backend import BackendUnavailableError
from ..checkpoint import CheckpointError
from ..cli.allocator import keep_freed_memory
from ..cli.status import BAD_INPUT, FAILED, INTERRUPTED, TERMINATED, OutOfMemory, Terminated, outcome
from ..data import DataError
from ..distributed.communicator import Communicator, SingleProcess
from ..kernels import compiled as kernel_tiers
from .graph import check_cuda_graph
from ..settings import DEFAULTS, RESUMABLE, UsageError, build_parser as _build_parser, model_config, resolve_settings
from . import memory
from .loop import final_test, run_epochs
from .signals import StopSignals
from .trainer import NonFinite, Trainer

__all__ = ["DEFAULTS", "RESUMABLE", "UsageError", "build_parser", "main", "model_config", "resolve_settings",
           "train"]


def build_parser() -> argparse.ArgumentParser:
    """The command line (npvit.settings.build_parser), with this program's description and exit statuses."""
    return _build_parser(description=__doc__.splitlines()[0],
                         epilog="Defaults are those of the Keras example. Model flags left out come from --preset."
                                "\n\n" + __doc__[__doc__.index("Exit status"):].strip())


def train(settings: dict[str, Any], resumed: dict[str, Any] | None = None,
          on_step: Callable[[int], None] | None = None, comm: Communicator | None = None) -> int:
    """Run (or continue) training as ``settings`` say. Returns the process exit status.

    ``resumed`` is the run's config.json when continuing (resolve_settings returns both); ``on_step`` is
    called with the global step after every optimizer step; ``comm`` connects the ranks of a data-parallel
    run (default: this process alone).
    """
    run = Trainer(dict(settings), comm or SingleProcess(), StopSignals(), on_step,
              recorded_model=resumed.get("model") if resumed is not None else None, recorded=resumed)
    with run.signals, run.folder, closing_tensorboard(run), quiet_float_warnings():
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
                status = run_epochs(run)
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
            return FAILED
        except MemoryError:
            raise OutOfMemory(out_of_memory_advice(run)) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UsageError(disk_full_advice(run, exc)) from None
            raise
        try:
            return final_test(run)
        except (KeyboardInterrupt, Terminated) as exc:
            run.say(f"\nthe test evaluation was interrupted; training is complete and saved in {run.folder.path}. "
                    f"Evaluate with: python -m npvit.train --resume {run.folder.path}")
            return INTERRUPTED if isinstance(exc, KeyboardInterrupt) else TERMINATED
        except MemoryError:
            raise OutOfMemory(out_of_memory_advice(run)) from None


@contextmanager
def quiet_float_warnings() -> Iterator[None]:
    """NumPy's overflow and invalid-value warnings off: the loop finds every non-finite loss, gradient or
    parameter itself and stops with one message saying what to change; the warnings would only precede it
    with source lines. (A filter, not np.errstate, which holds for the calling thread alone.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning)
        yield


@contextmanager
def closing_tensorboard(run: Trainer) -> Iterator[None]:
    """Close the run's event files however training ends (they are flushed at every epoch)."""
    try:
        yield
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()


def disk_full_advice(run: Trainer, exc: OSError) -> str:
    """Which disk is full, what is safe, and how to go on."""
    last = f"the last good checkpoint is {run.last_good}" if run.last_good else "no checkpoint was written"
    if run.last_good:
        go_on = f"--resume {run.folder.path} continues from it"
    elif run.folder.config.exists():
        go_on = f"--resume {run.folder.path} starts the run over"
    else:
        go_on = "start the run again"
    return (f"{exc.strerror or 'no space left'} while {run.phase} in {run.folder.path}"
            + (f" ({exc.filename})" if exc.filename else "")
            + f"; {last} (nothing half-written replaces a file). Free space on that disk, then {go_on}")


def out_of_memory_advice(run: Trainer) -> str:
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


def main(argv: list[str] | None = None) -> int:
    """The training program. On several processes, everything after connecting (the flags and their checks
    included) runs inside the fault handling that stops every rank, so no rank can fail alone and leave the
    others waiting for it."""
    try:
        comm = distributed.connect()  # this process alone, unless mpiexec or srun started several
    except distributed.DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    with distributed.stop_all_on_error(comm):
        given = vars(build_parser().parse_args(argv))  # a bad flag exits with status 2, on every rank
        status, message, everywhere = _train_command(given, comm)
        if message is not None and comm.size > 1 and not everywhere:
            distributed.fail(comm, message.strip(), status)  # it may have happened on this rank alone
        if message is not None and comm.rank == 0:  # every rank found it together (their disagreement)
            print(message, file=sys.stderr)
        return status


# What the command reports as one message and a status (npvit.cli.status) rather than a traceback. OSError:
# the run folder cannot be written, the disk is full, ...
EXPECTED = (UsageError, DataError, CheckpointError, BackendUnavailableError, distributed.DistributedError, OSError)


def _train_command(given: dict[str, Any], comm: Communicator) -> tuple[int, str | None, bool]:
    """Resolve the settings and train. Returns the exit status, for an expected error its message, and
    whether every rank stopped with it together (then they need not be aborted, and the run folder is left
    as it was)."""
    try:
        settings, resumed = resolve_settings(given)
        if settings["backend"] == "numpy":
            keep_freed_memory()  # a third faster on small models: freed arrays are not page-faulted back in
            tier = kernel_tiers.describe()  # a bad NPVIT_KERNELS stops the run here, with what to set
            if comm.rank == 0 and not settings["quiet"]:
                print(tier, flush=True)  # the first line printed: which kernels run the CPU's float32 math
        distributed.check_batch_size(settings["batch_size"], comm.size)
        check_cuda_graph(settings, comm.size)
        comm = distributed.for_backend(comm, settings["backend"])  # GPUs: this rank's device, before any use
        if comm.rank == 0 and not settings["quiet"] and (settings["backend"] == "cupy" or comm.size > 1):
            print(distributed.gradient_path(comm, settings["backend"]), flush=True)  # the first line printed
        if comm.size == 1:
            return train(settings, resumed), None, False  # one process: the call it always was
        return train(settings, resumed, comm=comm), None, False
    except BaseException as exc:  # a second Ctrl-C, or one outside the training loop, included
        result = outcome(exc, EXPECTED, "; free memory, or lower --batch-size")
        if result is None:
            raise
        return (*result, isinstance(exc, distributed.RanksDisagree))
