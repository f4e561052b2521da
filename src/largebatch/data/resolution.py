"""Progressive resizing: the training image side as a pure function of the global step.

FFCV's ResNet recipes train most epochs at a low resolution and ramp it up near the end
(libffcv/ffcv-imagenet, ``train_imagenet.py`` ``get_resolution`` and ``rn50_configs/``):
the side is ``start`` up to epoch ``ramp_start``, ``end`` from epoch ``ramp_end``, and in between
the linear interpolation rounded to a multiple of 32; it changes only at epoch boundaries.
Their ResNet-50 values: 160 -> 192 px, ramp over epochs 65-76 of 88 (``rn50_88_epochs.yaml``)
or 11-13 of 16 (``rn50_16_epochs.yaml``), evaluation at 256 px (``validation.resolution``).

Here the epoch is that of the step's first image, ``floor(step * B / N)`` for global batch
``B`` and ``N`` training images, so the side of a step is a function of the step alone: every
rank and every micro-batch of a step gets the same side, and a resumed run continues on the
same schedule with any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

from largebatch.errors import ConfigError

MULTIPLE = 32  # FFCV rounds the interpolated side to a multiple of 32


@dataclass(frozen=True)
class ResolutionSchedule:
    """``start`` px until epoch ``ramp_start``, ``end`` px from epoch ``ramp_end``, linear in
    between, rounded to a multiple of ``multiple`` (FFCV ``get_resolution``)."""

    start: int
    end: int
    ramp_start: float
    ramp_end: float
    multiple: int = MULTIPLE

    def __post_init__(self):
        if not 0 < self.start <= self.end:
            raise ConfigError(f"progressive resizing: need 0 < data.resolution_start ({self.start}) <= "
                              f"data.image_size ({self.end})")
        if not 0 <= self.ramp_start <= self.ramp_end:
            raise ConfigError(f"progressive resizing: data.resolution_ramp must be two epochs, first <= last, "
                              f"got {self.ramp_start:g}, {self.ramp_end:g}")

    def at_epoch(self, epoch: int) -> int:
        """The side for (whole) ``epoch``, counted from 0."""
        if epoch <= self.ramp_start:
            return self.start
        if epoch >= self.ramp_end:
            return self.end
        fraction = (epoch - self.ramp_start) / (self.ramp_end - self.ramp_start)
        side = self.start + fraction * (self.end - self.start)
        return int(round(side / self.multiple)) * self.multiple

    def at_step(self, step: int, global_batch: int, num_images: int) -> int:
        """The side of optimizer step ``step``: that of the epoch of its first stream position."""
        return self.at_epoch(step * global_batch // num_images)


def build_schedule(image_size: int, resolution_start: int, resolution_ramp: list[float]) -> ResolutionSchedule | None:
    """The schedule the data config asks for (``resolution_start`` 0: none, every step at
    ``image_size``)."""
    if not resolution_start:
        return None
    if len(resolution_ramp) != 2:
        raise ConfigError("progressive resizing: data.resolution_ramp must be two epochs (first, last), "
                          f"e.g. 65,76 for FFCV's 88-epoch ResNet-50; got {resolution_ramp}")
    return ResolutionSchedule(resolution_start, image_size, float(resolution_ramp[0]), float(resolution_ramp[1]))
