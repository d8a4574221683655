"""RunState: where a training run stands, saved in every checkpoint's meta and checked when read back.

Together with the checkpoint's weights and AdamW state it is everything a resumed run needs to continue
exactly: the data order, dropout and augmentation are pure functions of the seed and the step, so the loop
only has to know which step comes next and what the current epoch has summed so far.

In the checkpoint's meta it is the JSON object "state":

    {"epoch": 3, "step_in_epoch": 17, "global_step": 93, "best_score": 0.41, "best_epoch": 2,
     "partial": {"loss_sum": 301.2, "correct": 151, "seen": 544, "seconds": 12.5}}

(checkpoints written before the field was renamed call ``best_score`` "best_val_top1").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..checkpoint import CheckpointError
from ..files import is_finite_number, is_int


_KINDS = {
    "an integer >= 0": lambda v: is_int(v) and v >= 0,
    "an integer >= 1 or null": lambda v: v is None or (is_int(v) and v >= 1),
    "a number >= 0": lambda v: is_finite_number(v) and v >= 0,
    "a finite number or null": lambda v: v is None or is_finite_number(v),
}


@dataclass
class EpochTotals:
    """What the steps of the current epoch have added up so far (over all ranks)."""

    loss_sum: float = 0.0  # sum over the images seen of each image's loss
    correct: int = 0  # images whose top-1 prediction was right
    seen: int = 0  # images trained on
    seconds: float = 0.0  # training time, without validation

    @property
    def loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else math.nan

    @property
    def top1(self) -> float:
        return self.correct / self.seen if self.seen else math.nan


@dataclass
class RunState:
    """Where a run stands between two optimizer steps.

    Attributes:
        epoch: epochs completed (0-based index of the current epoch).
        step_in_epoch: optimizer steps done in the current epoch (all of them when a run was stopped between
            its last step and its validation).
        global_step: optimizer steps done in all (= epoch * steps_per_epoch + step_in_epoch).
        best_score: the best validation top-1 so far (minus the train loss when there is no validation
            split); None before the first evaluation.
        best_epoch: the epoch (1-based) best.npz comes from; None before the first evaluation.
        partial: the current epoch's running totals.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    partial: EpochTotals = field(default_factory=EpochTotals)

    def where(self) -> str:
        """'epoch 3, step 93': the epoch (1-based) the last step belongs to, and the steps done."""
        return f"epoch {self.epoch + (1 if self.step_in_epoch else 0)}, step {self.global_step}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in a checkpoint's meta under "state"."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "the checkpoint") -> "RunState":
        """Read the JSON form back, checking every field; raises CheckpointError naming what is wrong."""
        if not isinstance(doc, dict):
            raise CheckpointError(f"{where} has no training state (meta 'state' is {type(doc).__name__}, not an "
                                  "object); it was not written by npvit.train, or was changed")
        doc = dict(doc)
        if "best_score" not in doc and "best_val_top1" in doc:  # the field's earlier name
            doc["best_score"] = doc.pop("best_val_top1")
        partial = doc.get("partial")
        if not isinstance(partial, dict):
            raise CheckpointError(f"{where}: training state field 'partial' is missing or not an object")

        def get(d: dict, name: str, kind: str, label: str) -> Any:
            if name not in d:
                raise CheckpointError(f"{where}: training state has no field {label!r}")
            if not _KINDS[kind](d[name]):
                raise CheckpointError(f"{where}: training state field {label!r} must be {kind}, got {d[name]!r}")
            return d[name]

        totals = EpochTotals(
            loss_sum=float(get(partial, "loss_sum", "a number >= 0", "partial.loss_sum")),
            correct=get(partial, "correct", "an integer >= 0", "partial.correct"),
            seen=get(partial, "seen", "an integer >= 0", "partial.seen"),
            seconds=float(get(partial, "seconds", "a number >= 0", "partial.seconds")),
        )
        state = cls(
            epoch=get(doc, "epoch", "an integer >= 0", "epoch"),
            step_in_epoch=get(doc, "step_in_epoch", "an integer >= 0", "step_in_epoch"),
            global_step=get(doc, "global_step", "an integer >= 0", "global_step"),
            best_score=get(doc, "best_score", "a finite number or null", "best_score"),
            best_epoch=get(doc, "best_epoch", "an integer >= 1 or null", "best_epoch"),
            partial=totals,
        )
        if (state.best_score is None) != (state.best_epoch is None):
            raise CheckpointError(f"{where}: training state has best_score {state.best_score!r} but best_epoch "
                                  f"{state.best_epoch!r}; both or neither must be set")
        if totals.correct > totals.seen:
            raise CheckpointError(f"{where}: training state counts {totals.correct} correct of {totals.seen} images")
        return state

    def check_fits(self, steps_per_epoch: int, batch_size: int, train_images: int, optimizer_steps: int,
                   where: str = "the checkpoint") -> None:
        """Raise CheckpointError unless the state is one this run's data and batch size can reach, and the
        optimizer has taken exactly ``global_step`` steps."""
        problems = []
        if self.step_in_epoch > steps_per_epoch:  # equal: the steps are done, the epoch's end is not
            problems.append(f"step {self.step_in_epoch} of an epoch that has {steps_per_epoch} steps")
        if self.global_step != self.epoch * steps_per_epoch + self.step_in_epoch:
            problems.append(f"global step {self.global_step} after {self.epoch} epochs of {steps_per_epoch} "
                            f"steps and {self.step_in_epoch} more")
        if self.partial.seen != min(self.step_in_epoch * batch_size, train_images):
            problems.append(f"{self.partial.seen} images seen in {self.step_in_epoch} steps of {batch_size}")
        if self.best_epoch is not None and self.best_epoch > self.epoch + 1:
            problems.append(f"best epoch {self.best_epoch} after {self.epoch} epochs")
        if optimizer_steps != self.global_step:
            problems.append(f"optimizer step count {optimizer_steps}, training state step {self.global_step}")
        if problems:
            raise CheckpointError(f"{where} does not fit this run ({'; '.join(problems)}); it was changed, or "
                                  "belongs to another run")
