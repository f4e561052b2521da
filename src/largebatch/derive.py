"""The numbers a run derives from its configuration, computed once, in one pure function.

Everything that depends on how the global batch is split or scheduled comes from
:func:`derive`: the per-process batch, the micro-batch and accumulation steps, the peak LR given
by the scaling rule, and the step counts of the schedule. The sampler, schedule, augmenter,
noise-scale monitor, loop and report take their numbers from the :class:`RunPlan` it returns;
nothing else divides the global batch. It imports no torch, so ``largebatch train --dry-run``
and the report can call it cheaply.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from largebatch.errors import ConfigError
from largebatch.schedule import Schedule, build_schedule, scaled_lr

# On CPU the cost per image grows with the micro-batch (caches): 128 is near the optimum for small
# images on 2 cores. On a GPU, 256 fills the device for ResNet-50.
DEFAULT_MICRO_BATCH = {"cpu": 128, "cuda": 256}


@dataclass(frozen=True)
class BatchSplit:
    """``global_batch_size = processes * per_process_batch``; each process covers its share in
    ``accumulation_steps`` micro-batches of at most ``micro_batch_size`` images."""

    global_batch_size: int
    processes: int
    per_process_batch: int
    micro_batch_size: int
    accumulation_steps: int


def split_batch(global_batch: int, processes: int, micro_batch_size: int = 0, device_type: str = "cpu") -> BatchSplit:
    """How a global batch is split over ``processes`` and micro-batches (``micro_batch_size`` 0:
    the device's default, :data:`DEFAULT_MICRO_BATCH`)."""
    if processes < 1:
        raise ConfigError(f"the number of processes must be at least 1, got {processes}")
    if global_batch < 1:
        raise ConfigError(f"run.batch_size must be at least 1, got {global_batch}")
    if global_batch % processes:
        raise ConfigError(f"run.batch_size ({global_batch}) must be divisible by the number of "
                          f"processes ({processes})")
    per_process = global_batch // processes
    micro = min(micro_batch_size or DEFAULT_MICRO_BATCH.get(device_type, 128), per_process)
    return BatchSplit(global_batch, processes, per_process, micro, math.ceil(per_process / micro))


@dataclass(frozen=True)
class RunPlan:
    """How a run splits its global batch and schedules its learning rate.

    ``global_batch_size = processes * per_process_batch``; each process covers its share in
    ``accumulation_steps`` micro-batches of at most ``micro_batch_size`` images (sizes differ by at
    most one image when the share does not divide evenly). ``steps_per_epoch = train_images /
    global_batch_size`` may be fractional: the data stream runs on across epoch boundaries.
    """

    global_batch_size: int
    processes: int
    per_process_batch: int
    micro_batch_size: int
    accumulation_steps: int
    peak_lr: float
    total_steps: int
    warmup_steps: int
    steps_per_epoch: float
    train_images: int
    test_images: int
    epochs: int
    schedule: Schedule = field(repr=False)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        return self.schedule(step)

    def epoch_at(self, step: int) -> float:
        """Epochs completed after ``step`` steps (fractional)."""
        return step * self.global_batch_size / self.train_images

    def lr_points(self) -> list[list[float]]:
        """``[step, lr]`` at step 0, the last warmup step, the first step after it, every 10% of
        the run and the last step: enough to check a schedule by eye."""
        steps = {0, self.total_steps - 1}
        if self.warmup_steps:
            steps |= {self.warmup_steps - 1, min(self.warmup_steps, self.total_steps - 1)}
        steps |= {min(self.total_steps - 1, round(self.total_steps * tenth / 10)) for tenth in range(1, 10)}
        return [[step, self.lr_at(step)] for step in sorted(steps)]

    def as_dict(self) -> dict[str, Any]:
        """The derived numbers as plain values (what ``--dry-run --json`` prints as ``derived``)."""
        values = asdict(self)
        values.pop("schedule")
        values["steps_per_epoch"] = round(self.steps_per_epoch, 4)
        return values

    def describe(self) -> str:
        """A short aligned block for the start of a run."""
        rows = [
            ("global batch", f"{self.global_batch_size:,} = {self.processes} process"
                             f"{'es' if self.processes > 1 else ''} x {self.per_process_batch:,}"),
            ("micro-batch", f"{self.micro_batch_size:,} x {self.accumulation_steps} accumulated"),
            ("peak LR", f"{self.peak_lr:.6g}"),
            ("steps", f"{self.total_steps:,} ({self.steps_per_epoch:.3f} per epoch, {self.epochs} epochs)"),
            ("warmup", f"{self.warmup_steps:,} steps"),
            ("images", f"{self.train_images:,} train, {self.test_images:,} test"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def derive(config, world_size: int, train_images: int, test_images: int, device_type: str = "cpu",
           micro_batch_size: int = 0) -> RunPlan:
    """The :class:`RunPlan` of ``config`` (a :class:`largebatch.config.Config`) on ``world_size``
    processes with ``train_images`` / ``test_images`` images.

    ``micro_batch_size`` overrides ``run.micro_batch_size`` (the engine passes the size that fits
    in device memory). The peak LR follows the scaling rule (``schedule.scaling``):
    linear ``lr * B / B0`` (Goyal et al. 2017), sqrt ``lr * sqrt(B / B0)``, or none. Raises
    :class:`ConfigError` naming the option when the numbers cannot work.
    """
    run = config.run
    global_batch = run.batch_size
    if train_images < 1:
        raise ConfigError("the training set has no images")
    if global_batch > train_images:
        raise ConfigError(f"run.batch_size ({global_batch:,}) is larger than the training set ({train_images:,} "
                          "images): one step would see images twice; use at most the training set's size")
    split = split_batch(global_batch, world_size, micro_batch_size or run.micro_batch_size, device_type)
    peak_lr = scaled_lr(config.optimizer.lr, global_batch, config.schedule.base_batch_size, config.schedule.scaling)
    if not (math.isfinite(peak_lr) and peak_lr > 0):
        raise ConfigError(f"optimizer.lr: the peak LR ({peak_lr:g}, after the {config.schedule.scaling} scaling rule) "
                          "must be a positive finite number")
    schedule = build_schedule(config.schedule, peak_lr, run.epochs, train_images, global_batch)
    return RunPlan(global_batch_size=global_batch, processes=world_size, per_process_batch=split.per_process_batch,
                   micro_batch_size=split.micro_batch_size, accumulation_steps=split.accumulation_steps, peak_lr=peak_lr,
                   total_steps=schedule.total_steps, warmup_steps=schedule.warmup_steps,
                   steps_per_epoch=train_images / global_batch, train_images=train_images,
                   test_images=test_images, epochs=run.epochs, schedule=schedule)


def with_micro_batch(plan: RunPlan, micro_batch_size: int) -> RunPlan:
    """``plan`` with another micro-batch size (e.g. the largest that fits in device memory)."""
    split = split_batch(plan.global_batch_size, plan.processes, micro_batch_size)
    return replace(plan, micro_batch_size=split.micro_batch_size, accumulation_steps=split.accumulation_steps)
