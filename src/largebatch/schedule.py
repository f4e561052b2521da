"""Learning-rate schedules as pure functions of the optimizer step.

Resuming a run needs only the step. All lengths are given in epochs by the user and converted
to steps once, in :func:`steps_per_epoch`, where an epoch is ``images / global_batch`` steps
(fractional: the data stream runs on across epoch boundaries, see ``data/sampler.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def scaled_lr(base_lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
    """The LR scaling rule: ``linear`` lr = base_lr * B / B0 (Goyal et al. 2017),
    ``sqrt`` lr = base_lr * sqrt(B / B0) (Krizhevsky 2014), ``none`` lr = base_lr."""
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown scaling rule {rule!r}")


@dataclass(frozen=True)
class Schedule:
    """Warmup then decay, all in optimizer steps.

    warmup:  lr(t) = peak_lr * (t + 1) / warmup_steps            for t < warmup_steps
             (linear gradual warmup, Goyal et al. 2017; the first step already moves the weights)
    poly:    lr(t) = peak_lr * (1 - (t - W) / (T - W)) ** power   (You et al. 2017, power 2)
    cosine:  lr(t) = peak_lr * (1 + cos(pi * (t - W) / (T - W))) / 2
    step:    lr(t) = peak_lr * gamma ** (number of milestones <= t)
    constant: lr(t) = peak_lr
    where W = warmup_steps and T = total_steps; decay reaches 0 at t = T.
    """

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    decay: str = "poly"
    power: float = 2.0
    milestone_steps: tuple[int, ...] = ()
    step_gamma: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return self.peak_lr
        if self.decay == "step":
            passed = sum(1 for m in self.milestone_steps if step >= m)
            return self.peak_lr * self.step_gamma ** passed
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.decay == "poly":
            return self.peak_lr * (1.0 - progress) ** self.power
        if self.decay == "cosine":
            return self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"unknown decay {self.decay!r}")


def steps_for(epochs: float, images_per_epoch: int, global_batch: int) -> int:
    """Optimizer steps that cover ``epochs`` passes over the data, rounded up."""
    return max(1, math.ceil(epochs * images_per_epoch / global_batch - 1e-9))


def build_schedule(schedule_config, peak_lr: float, epochs: int, images_per_epoch: int,
                   global_batch: int) -> Schedule:
    """Convert epoch-based settings (warmup_epochs, milestones) into a step schedule. A warmup
    longer than the run is cut to the run (``largebatch train --epochs 1`` on a recipe with a
    2-epoch warmup warms up for the whole epoch)."""
    total = steps_for(epochs, images_per_epoch, global_batch)
    warmup = 0
    if schedule_config.warmup_epochs > 0:
        warmup = min(total, steps_for(schedule_config.warmup_epochs, images_per_epoch, global_batch))
    milestones = tuple(steps_for(m, images_per_epoch, global_batch) for m in schedule_config.milestones)
    return Schedule(peak_lr=peak_lr, total_steps=total, warmup_steps=warmup, decay=schedule_config.decay,
                    power=schedule_config.power, milestone_steps=milestones,
                    step_gamma=schedule_config.step_gamma)
