"""Training runs that tests in several folders share: the training program on tiny synthetic data, its
metrics rows, a toy trainer of a few float64 steps, and ranks as threads of one process (real collectives,
no MPI) to prove that N ranks train the model one process trains."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from npvit.distributed import SingleProcess
from npvit.model import ViT
from npvit.optim.adamw import AdamW
from npvit.data.device import DeviceDataset
from npvit.train import command as train_cli
from npvit.train.step import RunningSums, StepSettings, train_step

# A few seconds per run: the tiny model on 16x16 synthetic images, resized to 8x8 by the augmentation.
BASE = ["--dataset", "synthetic", "--synthetic-size", "240,60", "--synthetic-image-size", "16",
        "--synthetic-classes", "4", "--preset", "tiny", "--batch-size", "32", "--learning-rate", "3e-3",
        "--quiet"]
# One epoch of the tiny model on 64 training and 32 test images: the run folder the fault tests load.
TINY = ["--dataset", "synthetic", "--synthetic-size", "64,32", "--synthetic-image-size", "16",
        "--synthetic-classes", "4", "--preset", "tiny", "--batch-size", "32", "--epochs", "1", "--threads", "1",
        "--quiet"]


ONE_EPOCH = ["--dataset", "synthetic", "--synthetic-size", "64,16", "--synthetic-image-size", "16",
             "--synthetic-classes", "3", "--preset", "tiny", "--image-size", "8", "--batch-size", "32", "--epochs", "1",
             "--threads", "1", "--quiet", "--seed", "2"]
"""One epoch of the tiny model on 64 synthetic images: a run folder for the commands that read one."""


def run(tmp_path: Path, name: str, *flags: str) -> tuple[int, Path]:
    """``python -m npvit.train`` (in this process) with BASE and ``flags`` into ``tmp_path/name``."""
    out = tmp_path / name
    return train_cli.main([*BASE, "--out", str(out), *flags]), out


def rows(out: Path) -> list[dict]:
    """The run folder's metrics.jsonl, one dict per row."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(row: dict) -> dict:
    """A metrics row without its timings: what two runs of the same numbers share."""
    return {k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}


def toy_model(cfg) -> tuple[ViT, AdamW]:
    """The float64 model and optimizer every toy run starts from (seed 3, one thread, AdamW at 1e-2)."""
    model = ViT(cfg, dtype="float64", seed=3, threads=1)
    return model, AdamW(model.params, lr=1e-2)


def train_toy(comm, model: ViT, opt: AdamW, augmenter, x: np.ndarray, y: np.ndarray, batches: list,
              settings: StepSettings, ema=None) -> tuple[dict, tuple]:
    """``train_step`` over ``batches`` (global image indices) on rank ``comm``; returns the weights and the
    loss, correct and non-finite sums added over every rank."""
    sums = RunningSums(np)
    for step, batch in enumerate(batches):
        train_step(model, opt, augmenter, DeviceDataset(model.backend, x, y), batch, step, settings, sums, comm,
                   ema=ema)
    loss_sum, correct, nonfinite, _ = sums.read()
    return model.params, tuple(comm.allreduce_scalars([loss_sum, correct, nonfinite]))


class ThreadGroup:
    """Ranks as threads of one process, for testing: collectives meet at a barrier and add in rank order."""

    def __init__(self, size: int) -> None:
        self.size, self.slots, self.wall = size, [None] * size, threading.Barrier(size, timeout=60)

    def reduce(self, rank: int, value):
        self.slots[rank] = value
        self.wall.wait()
        total = self.slots[0]
        for other in self.slots[1:]:
            total = total + other
        self.wall.wait()  # every rank has read the slots before they are reused
        return total


class ThreadComm:
    """A rank of a ThreadGroup, as a Communicator (the collectives a training step uses are real)."""

    name = "threads"

    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.size = group, rank, group.size
        self.local_rank, self.local_size = rank, group.size

    def broadcast(self, obj, root: int = 0):
        return self.group.reduce(self.rank, [obj] if self.rank == root else [])[0]

    def abort(self, status: int = 1):
        raise SystemExit(status)

    def allreduce_sum(self, array) -> None:
        array[...] = self.group.reduce(self.rank, array.copy())

    def allreduce_scalars(self, values):
        return [float(v) for v in self.group.reduce(self.rank, np.asarray(values, dtype=np.float64))]

    def barrier(self) -> None:
        self.group.wall.wait()


def on_thread_ranks(run: Callable, size: int) -> list:
    """``run(comm)`` on ``size`` thread-ranks of one ThreadGroup at once; each rank's result, in rank order."""
    group, results = ThreadGroup(size), [None] * size

    def rank(r: int) -> None:
        results[r] = run(ThreadComm(group, r))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def assert_thread_ranks_train_what_one_process_trains(run: Callable, size: int) -> tuple[dict, tuple]:
    """``run(comm)`` -> (params, summed (loss, correct, nonfinite)) once alone and as ``size`` thread-ranks;
    asserts every rank ends with the single process's sums and weights. Returns the single process's."""
    single_params, single_sums = run(SingleProcess())
    for params, sums in on_thread_ranks(run, size):
        np.testing.assert_allclose(sums, single_sums, rtol=1e-13)
        for name, p in single_params.items():
            np.testing.assert_allclose(params[name], p, rtol=1e-10, atol=1e-12, err_msg=name)
    return single_params, single_sums
