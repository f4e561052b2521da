"""A processor's training rate as a function of its per-iteration batch b.

Two forms, both pure arithmetic:

- a **table** of (b, images/s) points, published or measured. Between two points the iteration
  time T(b) = b / R(b) is interpolated linearly; outside the table the saturating form fitted to
  the table carries the end point on (scaled to meet it), so the curve is continuous (if the
  table's times do not grow with b, the form cannot be fitted and the end point's rate is held).
- the **saturating form** R(b) = R_max * b / (b + b_half). Equivalently the iteration time is a
  fixed part plus a part per image, T(b) = (b_half + b) / R_max: b_half is the batch at which half
  the iteration is the fixed part (kernel launches, the optimizer step, an under-filled device).

The planner uses the shape only, R(b) / R(b_ref), and takes the level from the device's rate at
its reference batch b_ref (see presets.py), so a table measured on another model or in inference
can lend its shape.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

from largebatch.errors import ConfigError


def saturating(batch: float, max_rate: float, half_batch: float) -> float:
    """R(b) = R_max * b / (b + b_half), images/s."""
    return max_rate * batch / (batch + half_batch)


def fit_saturating(batches: Sequence[float], rates: Sequence[float]) -> tuple[float, float]:
    """Fit R(b) = R_max * b / (b + b_half) to measured (b, R) points; returns (R_max, b_half).

    The iteration time T = b / R = b_half / R_max + b / R_max is a straight line in b, fitted by
    least squares on relative error (weights 1 / T^2, so that small batches, which carry b_half,
    count as much as large ones, which carry R_max). A negative intercept (noise) is clipped to
    b_half = 0, a constant rate.
    """
    if len(batches) != len(rates):
        raise ConfigError("rate curve: as many batches as rates are needed")
    if len(set(batches)) < 2:
        raise ConfigError("rate curve: fitting needs at least two different batch sizes")
    if min(batches) <= 0 or min(rates) <= 0 or not all(map(math.isfinite, [*batches, *rates])):
        raise ConfigError("rate curve: batches and rates must be finite numbers > 0")
    times = [b / r for b, r in zip(batches, rates)]
    weights = [1 / t ** 2 for t in times]
    total = sum(weights)
    mean_b = sum(w * b for w, b in zip(weights, batches)) / total
    mean_t = sum(w * t for w, t in zip(weights, times)) / total
    covariance = sum(w * (b - mean_b) * (t - mean_t) for w, b, t in zip(weights, batches, times))
    variance = sum(w * (b - mean_b) ** 2 for w, b in zip(weights, batches))
    slope = covariance / variance
    if slope <= 0:
        raise ConfigError("rate curve: the iteration time did not grow with the batch; measure again on a "
                          "quieter machine or with larger batches")
    intercept = mean_t - slope * mean_b
    return 1 / slope, max(0.0, intercept) / slope


def check_table(batches: Sequence[float], rates: Sequence[float], where: str = "rate curve") -> None:
    """Raise ConfigError unless the table has >= 2 increasing batches and positive finite rates."""
    if len(batches) != len(rates):
        raise ConfigError(f"{where}: {len(batches)} batches but {len(rates)} rates")
    if len(batches) < 2:
        raise ConfigError(f"{where}: a table needs at least two points")
    if any(not math.isfinite(x) or x <= 0 for x in [*batches, *rates]):
        raise ConfigError(f"{where}: batches and rates must be finite numbers > 0")
    if any(b2 <= b1 for b1, b2 in zip(batches, batches[1:])):
        raise ConfigError(f"{where}: batches must be strictly increasing")


def table_rate(batch: float, batches: Sequence[float], rates: Sequence[float]) -> float:
    """R(b) from a table: T(b) = b / R(b) linear between points; the fitted saturating form,
    scaled to meet the nearest end point, outside them."""
    if batch <= 0:
        raise ConfigError(f"rate curve: batch must be > 0, got {batch}")
    first, last = batches[0], batches[-1]
    if first <= batch <= last:
        i = bisect_left(batches, batch)
        if batches[i] == batch:
            return rates[i]
        b0, b1 = batches[i - 1], batches[i]
        t0, t1 = b0 / rates[i - 1], b1 / rates[i]
        return batch / (t0 + (t1 - t0) * (batch - b0) / (b1 - b0))
    end, end_rate = (first, rates[0]) if batch < first else (last, rates[-1])
    try:
        max_rate, half_batch = fit_saturating(batches, rates)
    except ConfigError:  # a noisy table the form does not fit: hold the end point's rate
        return end_rate
    return end_rate * saturating(batch, max_rate, half_batch) / saturating(end, max_rate, half_batch)


def relative_rate(batch: float, reference_batch: float, batches: Sequence[float] = (),
                  rates: Sequence[float] = (), half_batch: float | None = None) -> float:
    """R(b) / R(b_ref): from the table if there is one, else the saturating form, else 1."""
    if batches:
        return table_rate(batch, batches, rates) / table_rate(reference_batch, batches, rates)
    if half_batch:
        return saturating(batch, 1.0, half_batch) / saturating(reference_batch, 1.0, half_batch)
    return 1.0
