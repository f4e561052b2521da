"""Learning-rate schedules as pure functions of the optimizer step.

Resuming a run needs only the step. All lengths are given in epochs by the user and converted
to steps once, in :func:`steps_per_epoch`, where an epoch is ``images / global_batch`` steps
(fractional: the data stream runs on across epoch boundaries, see ``data/sampler.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from largebatch.errors import ConfigError


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
    """Warmup then decay, all in optimizer steps; W = warmup_steps, T = total_steps, p = power.

    Warmup (t < W), a linear ramp that rises by the same amount every step:

    - ``warmup_start_lr = 0`` (default): lr(t) = peak_lr * (t + 1) / W. The ramp from 0 with its
      first step skipped (a step at LR 0 would not move the weights): the first step runs at
      peak_lr / W and the last warmup step at the peak.
    - ``warmup_start_lr = s > 0``: lr(t) = s + (peak_lr - s) * t / W. The first step runs at
      exactly s and the LR reaches the peak at step W. Goyal et al. 2017, sec. 2.2: "we start
      from a learning rate of eta and increment it by a constant amount at each iteration such
      that it reaches eta-hat = k*eta after 5 epochs" (sec. 5.2: from 0.1 to 3.2 at batch 8K).

    Decay (t >= W), with progress x measured from ``decay_from``:

    - ``decay_from = "warmup_end"`` (default): x = (t - W) / (T - W). The decay starts at the
      peak where the warmup ends (MLPerf's ResNet-50 references: mlcommons/training
      image_classification/tensorflow2/lars_util.py, NVIDIA's MXNet ``PolySchedule``).
    - ``decay_from = "start"``: x = t / T, the decay computed on the global step as if it had run
      from step 0 (You, Gitman, Ginsburg 2017, Algorithm 1: gamma_t = gamma_0 * (1 - t/T)^2;
      Caffe's "poly" policy, base_lr * (1 - iter/max_iter)^power, which the paper's Caffe runs
      combine with a linear warmup). The LR steps down at the warmup's end, from the peak to
      peak_lr * (1 - W/T)^p.

    poly:     lr(t) = peak_lr * (1 - x) ** power
    cosine:   lr(t) = peak_lr * (1 + cos(pi * x)) / 2
    step:     lr(t) = peak_lr * gamma ** (number of milestones <= t)   (``decay_from`` unused)
    constant: lr(t) = peak_lr
    Decay reaches 0 at t = T (x is capped at 1).
    """

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    decay: str = "poly"
    power: float = 2.0
    milestone_steps: tuple[int, ...] = ()
    step_gamma: float = 0.1
    warmup_start_lr: float = 0.0
    decay_from: str = "warmup_end"

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            if self.warmup_start_lr > 0:
                start = self.warmup_start_lr
                return start + (self.peak_lr - start) * step / self.warmup_steps
            return self.peak_lr * (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return self.peak_lr
        if self.decay == "step":
            passed = sum(1 for m in self.milestone_steps if step >= m)
            return self.peak_lr * self.step_gamma ** passed
        if self.decay_from == "start":
            progress = min(1.0, step / max(1, self.total_steps))
        elif self.decay_from == "warmup_end":
            progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        else:
            raise ValueError(f"unknown decay origin {self.decay_from!r}")
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
    2-epoch warmup warms up for the whole epoch). A warmup start above the peak is refused."""
    total = steps_for(epochs, images_per_epoch, global_batch)
    warmup = 0
    if schedule_config.warmup_epochs > 0:
        warmup = min(total, steps_for(schedule_config.warmup_epochs, images_per_epoch, global_batch))
    milestones = tuple(steps_for(m, images_per_epoch, global_batch) for m in schedule_config.milestones)
    warmup_start_lr = schedule_config.warmup_start_lr
    if warmup > 0 and warmup_start_lr > peak_lr:
        raise ConfigError(f"schedule.warmup_start_lr ({warmup_start_lr:g}) is above the peak LR ({peak_lr:g}) that "
                          "the warmup should reach; lower it, or raise optimizer.lr")
    return Schedule(peak_lr=peak_lr, total_steps=total, warmup_steps=warmup, decay=schedule_config.decay,
                    power=schedule_config.power, milestone_steps=milestones,
                    step_gamma=schedule_config.step_gamma, warmup_start_lr=warmup_start_lr,
                    decay_from=schedule_config.decay_from)
