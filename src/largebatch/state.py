"""The state of a training run that is not the model or the optimizer, saved by name.

A :class:`TrainState` is everything the loop accumulates: the step, the metrics records so far,
the running sums of the current epoch, the training time, what was skipped, and the best and
target results. Checkpoints hold :meth:`TrainState.state_dict`; a resumed run rebuilds it with
:meth:`TrainState.from_state_dict`, which checks every field by name and type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from largebatch.errors import CheckpointError


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl so far: step and epoch records
    train_time_s: float = 0.0  # time spent in training steps (not evaluation or checkpoints)
    epoch_loss_sum: float = 0.0  # sum of the per-step mean losses since the last epoch's end
    epoch_steps: int = 0
    epoch_images: int = 0
    epoch_time_s: float = 0.0
    skipped_steps: int = 0  # updates skipped on the device (non-finite gradients, fp16 overflow)
    skipped_files: list[str] = field(default_factory=list)  # unreadable images met by any rank
    best_top1: float | None = None
    best_epoch: int | None = None
    target_record: dict[str, Any] | None = None  # the first epoch record at or above run.target_top1

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, values: Any, source: str = "checkpoint") -> TrainState:
        """Rebuild from :meth:`state_dict`; a missing or mistyped field is a CheckpointError."""
        if not isinstance(values, dict):
            raise CheckpointError(f"{source}: its training state is not a table")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                raise CheckpointError(f"{source}: its training state lacks '{f.name}'")
            value = values[f.name]
            if not _has_type(value, f.type):
                raise CheckpointError(f"{source}: training state '{f.name}' has the wrong type "
                                      f"({type(value).__name__})")
            kwargs[f.name] = value
        return cls(**kwargs)


def _has_type(value: Any, annotation: str) -> bool:
    kinds = {"int": (int,), "float": (int, float), "list": (list,), "dict": (dict,)}
    optional = annotation.endswith("| None")
    if value is None:
        return optional
    base = annotation.split("[")[0].split("|")[0].strip()
    return isinstance(value, kinds[base]) and not isinstance(value, bool)
