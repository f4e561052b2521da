"""The LR sweep of one study cell (variant, augmentation, batch size): its best factor, whether
the sweep must widen, and how wide the range of good learning rates is. Pure functions of the
runs' results, no I/O: the study runner and the report make the same decisions from them.

Definitions (docs/study/README.md, "Tuned sweeps"):

- **The curve** of a cell: one point per LR factor, over the *curve seeds* (the study's
  ``seeds``; in a report, the seeds present at every factor of the cell). A point is **diverged**
  (failed) when any of its runs diverged, or, with the study's ``min_top1``, ended below that
  test top-1 (it did not train: 20% after 20 epochs on a 10-class task is no point on a curve of
  90% runs, and ranking it above another failure would stop a sweep at an artefact); otherwise
  its top-1 is the mean of its runs' final test top-1.
- **Ranking.** Every finished point ranks above every diverged point; finished points rank by
  top-1, ties going to the factor nearest 1 (the rule's own LR), then to the smaller factor. A
  diverged run has no top-1 (it failed), so diverged points are not ranked among themselves: a
  cell whose points all diverged has no best factor.
- **Widening.** When the best factor is the smallest or the largest factor swept, one more
  factor is added beyond it, the same ratio away as its neighbour (x0.5 or x2 for a sweep in
  factors of 2); a cell whose points all diverged widens downwards. This repeats until the best
  is interior, i.e. has a swept factor on each side (a diverged one counts: so it stops when the
  next factor diverges), or ``widen_limit`` factors have been added beyond that end.
- **Robustness**: the widest run of consecutive swept factors around the best whose points all
  finished with top-1 within ``tolerance`` (0.5 point) of the best's, as the log2 of the ratio of
  its largest to its smallest factor ("in factors of 2": 0 for the best alone, 2 for x0.5 .. x2).
  It is a lower bound when the run reaches an end of the sweep (``open_low`` / ``open_high``), and
  measured only to the sweep's resolution.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

TOLERANCE = 0.005  # 0.5 point of top-1, as a fraction


@dataclass(frozen=True)
class Result:
    """A finished run as the sweep sees it (``top1`` None when it diverged)."""

    lr_factor: float
    seed: int
    top1: float | None
    diverged: bool


@dataclass(frozen=True)
class FactorPoint:
    """One factor of a cell's curve, over the curve seeds."""

    lr_factor: float
    top1: float | None     # mean over the seeds; None when diverged
    diverged: bool
    seeds: tuple[int, ...]


@dataclass
class CellSweep:
    """A cell's curve and what is read from it."""

    points: list[FactorPoint]
    best: FactorPoint | None
    best_top1s: list[float] = field(default_factory=list)   # every finished run at the best factor
    best_diverged: int = 0                                   # runs at the best factor that diverged
    width_log2: float | None = None
    range_factors: tuple[float, float] | None = None
    open_low: bool = False
    open_high: bool = False

    @property
    def at_edge(self) -> bool:
        """The best factor is the smallest or largest swept (the sweep did not, or may not, widen)."""
        return self.swept and self.best is not None and self.best in (self.points[0], self.points[-1])

    @property
    def best_mean(self) -> float | None:
        return statistics.fmean(self.best_top1s) if self.best_top1s else None

    @property
    def best_std(self) -> float | None:
        return statistics.stdev(self.best_top1s) if len(self.best_top1s) > 1 else None

    @property
    def swept(self) -> bool:
        return len(self.points) > 1


def curve_seeds(results: list[Result]) -> set[int]:
    """The seeds present at every factor (the seeds the curve compares); all seeds if none is."""
    by_factor: dict[float, set[int]] = {}
    for r in results:
        by_factor.setdefault(r.lr_factor, set()).add(r.seed)
    common = set.intersection(*by_factor.values()) if by_factor else set()
    return common or {r.seed for r in results}


def curve(results: list[Result], seeds: set[int] | None = None) -> list[FactorPoint]:
    """One point per factor from the runs of ``seeds`` (default: :func:`curve_seeds`)."""
    seeds = curve_seeds(results) if seeds is None else seeds
    by_factor: dict[float, list[Result]] = {}
    for r in results:
        if r.seed in seeds:
            by_factor.setdefault(r.lr_factor, []).append(r)
    points = []
    for factor, runs in sorted(by_factor.items()):
        diverged = any(r.diverged or r.top1 is None for r in runs)
        top1 = None if diverged else statistics.fmean(r.top1 for r in runs)
        points.append(FactorPoint(factor, top1, diverged, tuple(sorted(r.seed for r in runs))))
    return points


def rank_key(point: FactorPoint) -> tuple:
    """Sort key, best first: finished before diverged, higher top-1, factor nearer 1, smaller factor."""
    if point.diverged or point.top1 is None:
        return (1, 0.0, 0.0, point.lr_factor)
    return (0, -point.top1, abs(math.log2(point.lr_factor)), point.lr_factor)


def best_point(points: list[FactorPoint]) -> FactorPoint | None:
    """The best factor of a curve, or None when every point diverged (or there is none)."""
    finished = [p for p in points if not p.diverged and p.top1 is not None]
    return min(finished, key=rank_key) if finished else None


def robust_range(points: list[FactorPoint], best: FactorPoint,
                 tolerance: float = TOLERANCE) -> tuple[float, float, bool, bool]:
    """(smallest factor, largest factor, open_low, open_high) of the consecutive finished points
    around ``best`` whose top-1 is within ``tolerance`` of it."""
    index = points.index(best)
    floor = best.top1 - tolerance - 1e-12  # 1e-12: a top-1 exactly 0.5 point lower is inside

    def good(point: FactorPoint) -> bool:
        return not point.diverged and point.top1 is not None and point.top1 >= floor

    low = high = index
    while low > 0 and good(points[low - 1]):
        low -= 1
    while high < len(points) - 1 and good(points[high + 1]):
        high += 1
    return points[low].lr_factor, points[high].lr_factor, low == 0, high == len(points) - 1


def failed_below(results: list[Result], min_top1: float) -> list[Result]:
    """``results`` with every run that finished below ``min_top1`` marked as failed (diverged,
    no top-1); ``min_top1`` 0 leaves them as they are."""
    if min_top1 <= 0:
        return list(results)
    return [Result(r.lr_factor, r.seed, None, True) if r.top1 is not None and r.top1 < min_top1 else r
            for r in results]


def analyse(results: list[Result], seeds: set[int] | None = None, tolerance: float = TOLERANCE) -> CellSweep:
    """The curve of a cell's results, its best factor (with every run there, extra seeds
    included) and the width of its good LR range."""
    points = curve(results, seeds)
    best = best_point(points)
    sweep = CellSweep(points, best)
    if best is None:
        return sweep
    at_best = [r for r in results if r.lr_factor == best.lr_factor]
    sweep.best_top1s = [r.top1 for r in sorted(at_best, key=lambda r: r.seed) if not r.diverged and r.top1 is not None]
    sweep.best_diverged = sum(1 for r in at_best if r.diverged or r.top1 is None)
    if sweep.swept:
        low, high, sweep.open_low, sweep.open_high = robust_range(points, best, tolerance)
        sweep.range_factors = (low, high)
        sweep.width_log2 = math.log2(high / low)
    return sweep


@dataclass(frozen=True)
class Widening:
    """The factor a sweep adds next and why."""

    lr_factor: float
    reason: str


def next_factor(points: list[FactorPoint], grid_low: float, grid_high: float, limit: int) -> Widening | None:
    """The factor to add to a cell's sweep, or None when its best is interior, it is no sweep
    (one factor), or ``limit`` factors were already added beyond that end of the grid
    (``grid_low`` .. ``grid_high``: the study file's factors)."""
    if len(points) < 2:
        return None
    factors = [p.lr_factor for p in points]
    best = best_point(points)
    if best is None or best.lr_factor == factors[0]:
        added = sum(1 for f in factors if f < grid_low)
        if added >= limit:
            return None
        factor = factors[0] * factors[0] / factors[1]
        why = ("every factor diverged" if best is None
               else f"the best factor x{factors[0]:g} is the smallest swept")
    elif best.lr_factor == factors[-1]:
        added = sum(1 for f in factors if f > grid_high)
        if added >= limit:
            return None
        factor = factors[-1] * factors[-1] / factors[-2]
        why = f"the best factor x{factors[-1]:g} is the largest swept"
    else:
        return None
    # six significant digits, as a run name writes it (0.3 x 0.3 / 0.6 is 0.15000000000000002)
    return Widening(float(f"{factor:.6g}"), why)
