"""A training run's parts: settings, run folder, data, model, optimizer, EMA, state, and its checkpoints.

``Trainer.setup`` checks the run folder and memory, loads the data, builds the model and optimizer and
restores last.npz when resuming; ``save`` writes checkpoints; the epoch loop that drives it is
``npvit.train.loop``. Rank 0 alone (``writer``) prints and writes.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import distributed
from ..backend import get_backend, to_numpy
from ..checkpoint import CheckpointError, check_array_dtypes, load_checkpoint, save_checkpoint
from ..cli.progress import ProgressBar
from ..config import ViTConfig
from ..settings import load_run_dataset
from ..data.augment import Augmenter, channel_stats
from ..data.device import DeviceDataset
from ..distributed.communicator import Communicator
from ..evaluate import EvalResult, shift_misfit
from ..files import atomic_write
from ..kernels.cross_entropy import check_labels
from ..model import ViT
from ..optim.adamw import AdamW
from ..optim.ema import WeightEMA
from ..parallel import available_cores
from ..settings import BY_NAME, UsageError, model_config
from ..data.fingerprint import dataset_fingerprint, fingerprint_difference
from . import memory
from .evaluation import evaluate_split
from .folder import MetricsLog, RunFolder
from .pretrained import arch_normalization, pretrained_model
from .signals import StopSignals
from .state import RunState
from .tensorboard import TensorBoardLog


def split_train_val(x: np.ndarray, y: np.ndarray, validation_split: float) -> tuple[np.ndarray, ...]:
    """Keras ``fit(validation_split=f)``: the last f of the data (in dataset order) is validation."""
    split_at = int(math.floor(len(x) * (1.0 - validation_split)))
    return x[:split_at], y[:split_at], x[split_at:], y[split_at:]


def log(message: str) -> None:
    print(message, flush=True)


class NonFinite(Exception):
    """A loss, gradient or parameter became NaN or infinite; the message says which and when."""


class Trainer:
    """One training run: its settings, data, model, optimizer, state and folder, and the loop over epochs.

    ``train`` builds one, then runs ``npvit.train.loop.run_epochs`` and ``final_test`` on it. Rank 0 alone (``writer``) prints and writes.
    """

    def __init__(self, s: dict[str, Any], comm: Communicator, signals: StopSignals,
                 on_step: Callable[[int], None] | None, recorded_model: Any = None,
                 recorded: dict[str, Any] | None = None) -> None:
        self.s, self.comm, self.signals, self.on_step = s, comm, signals, on_step
        self.recorded_model = recorded_model  # a resumed run's model, as its config.json recorded it
        self.recorded = recorded or {}  # a resumed run's whole config.json (its data fingerprint, normalisation)
        self.writer = comm.rank == 0
        self.folder = RunFolder(s["out"])
        self.state = RunState()
        self.last_good: str | None = None  # "path (epoch E, step S)" of the last checkpoint known to be sound
        self.phase = "starting"
        self.bar: ProgressBar | None = None
        self.tensorboard: TensorBoardLog | None = None  # rank 0's event files, with --tensorboard

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
        held = folder.contents()
        if resuming:
            if held.last_usable:
                return True
            if held.trained:
                why = "is not a readable file (a dangling or looping link, or not a regular file)" if held.last \
                    else "is missing"
                raise UsageError(f"{folder.path} holds a trained run ({held.describe()}) but its last.npz {why}: "
                                 "resuming would start it over from step 0 and overwrite what is there, so nothing "
                                 "was changed. To continue from the best epoch's weights, copy best.npz to last.npz "
                                 f"(cp {folder.best} {folder.last}) and --resume again; or start a new run with "
                                 "another --out")
            self.say(f"{folder.path} has no checkpoint yet (the run stopped before its first one): starting it "
                     "over from step 0 with its saved settings")
            return False
        if held.last or (held.config and held.trained):
            raise UsageError(f"{folder.path} already holds a run ({held.describe()}); continue it with --resume "
                             f"{folder.path} or choose another --out")
        if held.config:
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
        has_checkpoint = self.open_folder(resuming) if self.writer else resuming and self.folder.contents().last_usable
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
        pretrained, source_stats = None, None
        if s["init_from"] is not None and self.recorded_model is None:  # a new run from pretrained weights
            self.phase = "reading the pretrained weights"
            pretrained, source_stats = pretrained_model(s, cfg)
            self.cfg = cfg = pretrained.config  # the file's details (class token, depth, norm placement)
        if s["arch"] is not None:  # a timm model sees its images normalised as timm normalises them
            mean, variance = arch_normalization(s["arch"])
        elif source_stats is not None:  # an npvit model's weights, as its own training normalised the images
            mean, variance = source_stats
        else:
            mean, variance = channel_stats(data.x_train)  # Keras adapt(x_train): before the validation split
            if s["init_from"] is not None:  # resumed: the normalisation of the weights it started from
                mean, variance = recorded_normalization(self.recorded, mean, variance)
        fingerprint = dataset_fingerprint(data.x_train, data.y_train, data.x_test, data.y_test)
        difference = fingerprint_difference(self.recorded.get("data"), fingerprint)
        if difference is not None:
            if not s["allow_different_data"]:
                raise UsageError(f"the data differs from the data {self.folder.path} was trained on ({difference})"
                                 "; resume with the run's own data, or add --allow-different-data if training "
                                 "on other data is intended")
            self.say(f"note: training on other data than before ({difference}), as --allow-different-data "
                     "allows; the run keeps its normalisation")
            mean, variance = recorded_normalization(self.recorded, mean, variance)
        x_train, y_train, x_val, y_val = split_train_val(data.x_train, data.y_train, s["validation_split"])
        if s["train_subset"] is not None:
            x_train, y_train = x_train[: s["train_subset"]], y_train[: s["train_subset"]]
        if len(x_train) == 0:
            raise UsageError("no training images left: lower --validation-split or raise --train-subset")
        misfit = shift_misfit(s["eval_shift"], *data.x_test.shape[1:3])
        if len(data.x_test) and misfit:
            raise UsageError(misfit)
        self.x_train, self.y_train, self.x_val, self.y_val = x_train, y_train, x_val, y_val
        self.check_step_fits(resuming and has_checkpoint)

        self.phase = "building the model"
        # Threads change nothing in the results (dropout is keyed by image): a run resumed on another number of
        # processes takes its own share of the cores.
        self.model = model = ViT(cfg, backend=self.backend, dtype=s["dtype"], seed=s["seed"],
                                 threads=s["threads"] or distributed.threads_per_process(comm))
        if pretrained is not None:
            model.load_params(pretrained.params)
            del pretrained
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
                          "data": fingerprint,
                          # --allow-different-data allows one resume; it is not a setting of the run
                          "run": {k: v for k, v in s.items() if k not in ("out", "allow_different_data")}}
        if has_checkpoint:
            self.restore()
        self.agree(fingerprint)  # before anything is written
        if self.writer:
            self.metrics = MetricsLog.resume(self.folder.metrics, self.state.global_step)
            if s["tensorboard"]:
                self.tensorboard = TensorBoardLog(self.folder.tensorboard, self.state.global_step)
            write_json(self.folder.config, self.base_meta)
        comm.barrier()

    def agree(self, fingerprint: dict[str, Any]) -> None:
        """Every rank holds the same settings, step, weights, optimizer state and data, or every rank stops
        saying where they differ (npvit.distributed.agree; nothing to do on one process)."""
        if self.comm.size == 1:
            return
        local = ("data_dir", "cache_dir", "download", "threads", "quiet", "out")  # where and how, per rank
        record: dict[str, Any] = {BY_NAME[k].flag: v for k, v in self.s.items() if k not in local and k in BY_NAME}
        record["the step"] = self.state.global_step
        record["the weights (a hash)"] = distributed.digest(sorted((k, to_numpy(v))
                                                                   for k, v in self.model.params.items()))
        record["the optimizer state (a hash)"] = distributed.digest(sorted(self.opt.state_dict().items()))
        if self.ema is not None:
            record["the EMA weights (a hash)"] = distributed.digest(sorted(self.ema.state_dict().items()))
        record["the dataset (its fingerprint)"] = fingerprint
        distributed.agree(self.comm, record, " on how to train")

    def restore(self) -> None:
        """Continue from last.npz: weights, AdamW state, the EMA of the weights (with --ema) and RunState,
        each checked against this run."""
        path = self.folder.last
        ckpt = load_checkpoint(path)
        if "state" not in ckpt.meta:
            raise CheckpointError(f"{path} has no training state (no 'state' in its meta): it was not written by "
                                  "npvit.train, so it cannot be resumed; evaluate it with npvit.evaluate instead")
        state = RunState.from_dict(ckpt.meta["state"], str(path))
        dtype = self.s["dtype"]
        check_array_dtypes(ckpt.params, dtype, "parameter", path)
        check_array_dtypes({k: a for k, a in ckpt.optimizer.items() if k != "step"}, dtype, "optimizer state", path)
        check_array_dtypes(ckpt.ema, dtype, "EMA weight", path)
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

    def validate(self) -> EvalResult:
        """The model's current weights on the validation split."""
        return evaluate_split(self.comm, self.model, self.augmenter, self.x_val, self.y_val,
                              self.s["eval_batch_size"], flip=self.s["eval_flip"])


def recorded_config(doc: Any, source: Path) -> ViTConfig:
    """The model config a run recorded in its config.json, or UsageError saying the file is damaged."""
    try:
        if not isinstance(doc, dict):
            raise TypeError(f"a JSON {type(doc).__name__}, not an object")
        return ViTConfig.from_dict(doc)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{source}: its \"model\" entry is not a model config ({str(exc)[:160]}); the file is "
                         "damaged or was edited by hand") from None


def recorded_normalization(doc: dict[str, Any], mean: np.ndarray, variance: np.ndarray) -> tuple[np.ndarray, ...]:
    """The channel mean and variance a run recorded in its config.json, or the given ones if none is readable."""
    try:
        norm = doc["normalization"]
        recorded = (np.asarray(norm["mean"], dtype=mean.dtype), np.asarray(norm["variance"], dtype=variance.dtype))
    except (KeyError, TypeError, ValueError):
        return mean, variance
    if recorded[0].shape != mean.shape or recorded[1].shape != variance.shape:
        return mean, variance
    return recorded


def write_json(path: Path, doc: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(doc, indent=2).encode()))
