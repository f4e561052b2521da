"""The critical batch size of a study: steps and examples each batch size needed to reach a target.

McCandlish, Kaplan, Amodei et al. 2018 ("An Empirical Model of Large-Batch Training", section 2):
the steps S and training examples E = S x B that batch size B needs to reach a given target trade
off as

    (S / S_min - 1) (E / E_min - 1) = 1

with S_min the fewest steps (infinite batch) and E_min the fewest examples (batch of one). With
E = S B this is S(B) = S_min + E_min / B = S_min (1 + B_crit / B), and the critical batch size
B_crit = E_min / S_min is the batch at which training takes twice the fewest steps and twice the
fewest examples. The paper predicts B_crit ~ B_noise, the gradient noise scale measured at the
target (``largebatch.noise_scale``; B_simple estimates it).

``largebatch critical-batch STUDY_DIR --target-top1 X`` reads a study's run directories (complete or
still running; each file validated, a damaged run skipped with a warning) and, with ``--merge``,
the rows of earlier reports' results.json files (runs done on other machines), finds where each run's
test top-1 first reaches X (linear interpolation between evaluations, in optimizer steps), takes
per batch size the runs at the cell's best LR factor (the factor with the best final top-1, as
``largebatch report`` ranks them; ``--lr-choice fastest``: the fewest steps), fits S_min and E_min
by least squares on log S, prints a table and writes a plot. Only measured crossings enter the
fit: a run that reached the target at its first evaluation gives an upper bound on S, one that
never reached it a lower bound; both are drawn, neither is fitted. A fit that cannot be made
(fewer than two batch sizes measured, or S_min or E_min indistinguishable from 0) is refused with
its reason. Matplotlib is imported only to draw, torch only to write the outputs
(``largebatch.checkpoint.write_atomic``): ``largebatch plan --from-study`` reads a study without either.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from largebatch.config import AUGMENTATIONS
from largebatch.errors import ConfigError, DataError, UserError
from largebatch.progress import read_metrics
from largebatch.study.names import READABLE_VARIANT
from largebatch.study.runs import (DamagedRun, find_started_run_dirs, load_results, read_epochs, read_run,
                                   study_min_top1)
from largebatch.study.sweep import Result, analyse, failed_below

# plan.statistical reads a run's records through this name; largebatch.progress.read_metrics is
# the one reader.
read_records = read_metrics

LR_CHOICES = ("best", "fastest")
# A fitted S_min (E_min) below this fraction of the fewest steps (examples) measured is taken as 0:
# the data then hold no critical batch (B_crit = E_min / S_min would be 1,000 times off the data).
VANISHING = 1e-3

# --- steps to a target ------------------------------------------------------------------------


@dataclass(frozen=True)
class Crossing:
    """Where a run first reached the target: optimizer steps and epochs (interpolated).
    ``upper_bound``: reached at the first evaluation, so no earlier point is known."""

    steps: float
    epoch: float
    note: str = ""
    upper_bound: bool = False


def steps_to_target(records: list[dict[str, Any]], target_top1: float) -> Crossing | None:
    """The first crossing of ``target_top1`` by the evaluated records (each with ``step``, ``epoch``,
    ``top1``), interpolated linearly in steps between the evaluation below the target and the one
    that reached it. When the first evaluation already reaches it, its step is returned (an upper
    bound: no earlier point is known). None if the target was never reached."""
    evaluated = sorted((r for r in records if r.get("top1") is not None), key=lambda r: r["step"])
    previous = None
    for record in evaluated:
        if record["top1"] >= target_top1:
            if previous is None:
                return Crossing(float(record["step"]), float(record["epoch"]),
                                "reached at the first evaluation: an upper bound", upper_bound=True)
            fraction = (target_top1 - previous["top1"]) / (record["top1"] - previous["top1"])
            steps = previous["step"] + fraction * (record["step"] - previous["step"])
            epoch = previous["epoch"] + fraction * (record["epoch"] - previous["epoch"])
            return Crossing(steps, epoch)
        previous = record
    return None


# --- the study's runs ---------------------------------------------------------------------------


@dataclass
class RunPoint:
    """One run of the study and its crossing of the target (steps None: not reached).

    ``bound``: "" for a measured crossing, "upper" when the target was reached at the first
    evaluation (S is at most ``steps``), "lower" when a complete run never reached it (S is more
    than ``bound_steps``, the steps it ran). Only measured points enter the fit."""

    run: str
    variant: str
    batch_size: int
    seed: int
    lr_factor: float
    augmentation: str
    complete: bool
    steps: float | None
    examples: float | None
    epoch: float | None
    note: str = ""
    used: bool = False  # the point that stands for its batch size in the fit
    top1: float | None = None      # final test top-1 of a complete run
    diverged: bool = False
    bound: str = ""
    bound_steps: float | None = None

    @property
    def measured(self) -> bool:
        return self.steps is not None and not self.bound


def study_points(study_dir: Path, target_top1: float, variant: str = "lars", augmentation: str | None = None,
                 strict: bool = False, warnings: list[str] | None = None,
                 merge: list[str] | tuple[str, ...] = ()) -> list[RunPoint]:
    """Every run directory of ``variant`` under ``study_dir`` (config.toml and metrics.jsonl; runs
    still training count once they have reached the target), with its crossing of the target,
    and the rows of ``merge`` (results.json files) whose runs are not there. A damaged run is left
    out with a line in ``warnings`` (raised with ``strict``)."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir() and not merge:
        raise UserError(f"{study_dir}: not a directory (give a study directory, e.g. runs/study_fashion_mnist)")
    run_dirs = find_started_run_dirs(study_dir) if study_dir.is_dir() else []
    if not run_dirs and not merge:
        raise UserError(f"{study_dir}: no run directories (config.toml with metrics.jsonl) found")
    points, variants = [], set()
    for run_dir in run_dirs:
        try:
            run = read_run(run_dir, need_summary=False)
        except DamagedRun as error:
            if strict:
                raise
            if warnings is not None:
                warnings.append(f"skipped run {run_dir}: {error}")
            continue
        config, summary = run.config, run.summary
        run_variant = run.variant or config.optimizer.name
        variants.add(run_variant)
        if run_variant != variant or (augmentation is not None and config.data.augmentation != augmentation):
            continue
        complete = summary is not None
        points.append(crossing_point(
            str(run_dir.relative_to(study_dir)) if run_dir != study_dir else run_dir.name, run_variant,
            config.run.batch_size, config.run.seed, run.lr_factor, config.data.augmentation, run.epochs, target_top1,
            complete=complete, top1=summary["top1"] if complete else None,
            diverged=bool(complete and summary["diverged"]),
            ran_steps=(summary["steps"] or max((r["step"] for r in run.epochs), default=0)) if complete else 0))
    present = {Path(p.run).name for p in points}
    for source in merge:
        rows, skipped = load_results(source, strict)
        if warnings is not None:
            warnings.extend(skipped)
        for row in rows:
            row_variant = row["variant"] or row["optimizer"]
            variants.add(row_variant)
            name = Path(row["run"]).name
            if (row_variant != variant or name in present
                    or (augmentation is not None and row["augmentation"] != augmentation)):
                continue
            present.add(name)
            points.append(row_point(row, target_top1))
    if not points:
        raise UserError(f"{study_dir}: no runs of variant '{variant}'"
                        + (f" with augmentation '{augmentation}'" if augmentation else "")
                        + f" (variants found: {', '.join(sorted(variants)) or 'none readable'}; choose with --variant)")
    chosen_augmentations = {p.augmentation for p in points}
    if augmentation is None and len(chosen_augmentations) > 1:
        raise UserError(f"{study_dir}: runs with several augmentation levels ({', '.join(sorted(chosen_augmentations))}); "
                        "choose one with --augmentation")
    return sorted(points, key=lambda p: (p.batch_size, p.lr_factor, p.seed))


def crossing_point(run: str, variant: str, batch_size: int, seed: int, lr_factor: float, augmentation: str,
                   records: list[dict[str, Any]], target_top1: float, *, complete: bool, top1: float | None,
                   diverged: bool, ran_steps: float) -> RunPoint:
    """A run's point: where its evaluated ``records`` first reach ``target_top1``; when they never
    do, why: diverged, still training, or (complete, ``ran_steps`` > 0) a lower bound; when they
    reach it at the first evaluation, an upper bound."""
    crossing = steps_to_target(records, target_top1)
    point = RunPoint(run=run, variant=variant, batch_size=batch_size, seed=seed, lr_factor=lr_factor,
                     augmentation=augmentation, complete=complete,
                     steps=crossing.steps if crossing else None,
                     examples=crossing.steps * batch_size if crossing else None,
                     epoch=crossing.epoch if crossing else None, top1=top1, diverged=diverged)
    if crossing is None:
        point.note = "not reached" if complete else "not reached yet (run incomplete)"
        if diverged:
            point.note = "diverged before reaching it"
        elif complete and ran_steps > 0:
            point.bound, point.bound_steps = "lower", float(ran_steps)
            point.note = f"not reached in {ran_steps:,} steps: a lower bound"
    elif crossing.upper_bound:
        point.bound, point.bound_steps, point.note = "upper", crossing.steps, crossing.note
    return point


def row_point(row: dict[str, Any], target_top1: float) -> RunPoint:
    """The point of a results.json row (a complete run done elsewhere): its evaluations are
    ``top1_by_epoch`` at the steps of ``step_by_epoch``; a row written before that key existed
    places each evaluation at epoch x steps / epochs (exact when an epoch is a whole number of
    steps), and the point says so."""
    diverged = row["diverged"]
    steps_at = dict(map(tuple, row.get("step_by_epoch") or []))
    per_epoch = row["steps"] / row["epochs"] if row["steps"] and not diverged else None
    records = [{"epoch": epoch, "top1": top1, "step": steps_at.get(epoch, per_epoch * epoch if per_epoch else None)}
               for epoch, top1 in row["top1_by_epoch"]]
    estimated = not steps_at and bool(records)
    records = [r for r in records if r["step"] is not None]
    point = crossing_point(Path(row["run"]).name, row["variant"] or row["optimizer"], row["batch_size"], row["seed"],
                           row["lr_factor"], row["augmentation"], records, target_top1, complete=True,
                           top1=row["top1"], diverged=diverged, ran_steps=row["steps"])
    if estimated and point.steps is not None:
        point.note = (point.note + "; " if point.note else "") + "steps placed at epoch x steps / epochs (merged row)"
    return point


def best_factors(points: list[RunPoint], min_top1: float = 0.0) -> dict[int, float | None]:
    """Each batch size's best LR factor by final top-1 over its complete runs (the ranking of
    ``largebatch.study.sweep``: diverged runs, and those ending below ``min_top1``, last); a batch
    with one factor: that factor, even while its runs train; None when no factor can be chosen yet
    (or every factor failed)."""
    by_batch: dict[int, list[RunPoint]] = {}
    for p in points:
        by_batch.setdefault(p.batch_size, []).append(p)
    chosen: dict[int, float | None] = {}
    for batch, mine in by_batch.items():
        factors = {p.lr_factor for p in mine}
        if len(factors) == 1:
            chosen[batch] = factors.pop()
            continue
        results = [Result(p.lr_factor, p.seed, p.top1, p.diverged) for p in mine if p.complete]
        best = analyse(failed_below(results, min_top1)).best if results else None
        chosen[batch] = best.lr_factor if best else None
    return chosen


def steps_by_batch(points: list[RunPoint], lr_choice: str = "best", min_top1: float = 0.0) -> dict[int, float]:
    """One number of steps per batch size, from measured crossings only, and marks the runs used.
    ``best``: the runs at the batch's best LR factor (:func:`best_factors`, with the study's
    ``min_top1``), mean over seeds; ``fastest``: for each seed the factor with the fewest steps,
    then the mean over seeds."""
    if lr_choice not in LR_CHOICES:
        raise ValueError(f"lr_choice must be one of {LR_CHOICES}")
    chosen = best_factors(points, min_top1) if lr_choice == "best" else {}
    by_batch: dict[int, dict[int, RunPoint]] = {}
    for point in points:
        if not point.measured:
            continue
        if lr_choice == "best" and point.lr_factor != chosen.get(point.batch_size):
            continue
        best = by_batch.setdefault(point.batch_size, {}).get(point.seed)
        if best is None or point.steps < best.steps:
            by_batch[point.batch_size][point.seed] = point
    result = {}
    for batch, per_seed in sorted(by_batch.items()):
        for point in per_seed.values():
            point.used = True
        result[batch] = statistics.fmean(p.steps for p in per_seed.values())
    return result


def fit_refusal(points: list[RunPoint], by_batch: dict[int, float]) -> str:
    """Why no fit can be made from these points ('' when two batch sizes or more are measured)."""
    if len(by_batch) >= 2:
        return ""
    upper = sorted({p.batch_size for p in points if p.bound == "upper"})
    lower = sorted({p.batch_size for p in points if p.bound == "lower"})
    parts = [f"measured at {', '.join(map(str, by_batch)) or 'no batch size'}"]
    if upper:
        parts.append(f"upper bounds only (reached at the first evaluation) at {', '.join(map(str, upper))}")
    if lower:
        parts.append(f"never reached at {', '.join(map(str, lower))}")
    return ("the fit needs measured steps at two batch sizes or more (" + "; ".join(parts)
            + "): choose a --target-top1 the runs cross between evaluations, or wait for more runs")


# --- the fit ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TradeoffFit:
    """S(B) = S_min (1 + B_crit / B), E(B) = E_min (1 + B / B_crit), B_crit = E_min / S_min."""

    min_steps: float
    min_examples: float
    rms_log_residual: float   # root mean square of log(S measured / S fitted)
    batch_sizes: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def critical_batch(self) -> float:
        return self.min_examples / self.min_steps

    def steps(self, batch: float) -> float:
        return self.min_steps + self.min_examples / batch

    def examples(self, batch: float) -> float:
        return self.steps(batch) * batch

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "critical_batch": self.critical_batch}


def fit_tradeoff(batch_sizes: list[float], steps: list[float]) -> TradeoffFit:
    """Fit S_min and E_min to measured (B, S) by least squares on log S (each point's relative error
    counts alike), with S = S_min + E_min / B, the paper's (S/S_min - 1)(E/E_min - 1) = 1 with
    E = S B. Levenberg-Marquardt on (log S_min, log E_min), started from the linear least-squares
    solution of S = S_min + E_min / B."""
    if len(batch_sizes) != len(steps):
        raise ValueError("batch_sizes and steps differ in length")
    pairs = sorted((float(b), float(s)) for b, s in zip(batch_sizes, steps))
    if len({b for b, _ in pairs}) < 2:
        raise UserError("the fit needs runs of at least two batch sizes that reached the target "
                        "(lower --target-top1, or wait for more runs to get there)")
    if any(not (b > 0 and s > 0) for b, s in pairs):
        raise ValueError("batch sizes and steps must be positive")
    x = [1.0 / b for b, _ in pairs]
    y = [s for _, s in pairs]
    log_y = [math.log(s) for s in y]

    # start: weighted (1/S) linear least squares of S = S_min + E_min x
    weights = [1.0 / s ** 2 for s in y]
    sw = sum(weights)
    sx = sum(w * xi for w, xi in zip(weights, x))
    sy = sum(w * yi for w, yi in zip(weights, y))
    sxx = sum(w * xi * xi for w, xi in zip(weights, x))
    sxy = sum(w * xi * yi for w, xi, yi in zip(weights, x, y))
    determinant = sw * sxx - sx * sx
    min_steps = (sxx * sy - sx * sxy) / determinant if determinant else min(y) / 2
    min_examples = (sw * sxy - sx * sy) / determinant if determinant else min(b * s for b, s in pairs) / 2
    if not min_steps > 0:
        min_steps = min(y) / 2
    if not min_examples > 0:
        min_examples = min(b * s for b, s in pairs) / 2
    a, c = math.log(min_steps), math.log(min_examples)
    # keep the parameters within a wide box so that a degenerate direction cannot run off to infinity
    low_a, high_a = math.log(max(y)) - 30, math.log(max(y)) + 1
    low_c, high_c = math.log(min(b * s for b, s in pairs)) - 30, math.log(max(b * s for b, s in pairs)) + 1

    def residuals(a: float, c: float) -> list[float]:
        return [ly - math.log(math.exp(a) + math.exp(c) * xi) for ly, xi in zip(log_y, x)]

    def cost(a: float, c: float) -> float:
        return sum(r * r for r in residuals(a, c))

    damping = 1e-3
    current = cost(a, c)
    for _ in range(500):
        # Jacobian of the residuals: d r / d a = -p, d r / d c = -(1 - p), p = S_min / S(B)
        shares = [math.exp(a) / (math.exp(a) + math.exp(c) * xi) for xi in x]
        r = residuals(a, c)
        j_aa = sum(p * p for p in shares)
        j_cc = sum((1 - p) ** 2 for p in shares)
        j_ac = sum(p * (1 - p) for p in shares)
        g_a = -sum(p * ri for p, ri in zip(shares, r))
        g_c = -sum((1 - p) * ri for p, ri in zip(shares, r))
        while True:
            m_aa, m_cc = j_aa * (1 + damping) + 1e-12, j_cc * (1 + damping) + 1e-12
            det = m_aa * m_cc - j_ac * j_ac
            step_a = -(m_cc * g_a - j_ac * g_c) / det
            step_c = -(m_aa * g_c - j_ac * g_a) / det
            new_a = min(max(a + step_a, low_a), high_a)
            new_c = min(max(c + step_c, low_c), high_c)
            new = cost(new_a, new_c)
            if new <= current or damping > 1e12:
                break
            damping *= 10
        moved = abs(new_a - a) + abs(new_c - c)
        if new <= current:
            a, c, current = new_a, new_c, new
            damping = max(damping / 10, 1e-12)
        if moved < 1e-12 or damping > 1e12:
            break

    fit_min_steps, fit_min_examples = math.exp(a), math.exp(c)
    smallest, largest = pairs[0][0], pairs[-1][0]
    # The fit works on log S_min and log E_min, so it cannot return 0 or less; the least-squares
    # optimum at "0" shows as a value many orders of magnitude below the data.
    if fit_min_steps < VANISHING * min(y):
        raise UserError(f"no critical batch can be fitted: the fit puts S_min at {fit_min_steps:.3g} steps, effectively "
                        f"0 (below {VANISHING:g} x the fewest steps measured, {min(y):,.0f}): the steps fall as 1/B "
                        f"over the whole range measured ({smallest:,.0f} to {largest:,.0f}), so B_crit lies beyond "
                        "it; measure larger batches")
    if fit_min_examples < VANISHING * min(b * s for b, s in pairs):
        raise UserError(f"no critical batch can be fitted: the fit puts E_min at {fit_min_examples:.3g} examples, "
                        f"effectively 0: the steps do not fall with the batch over the range measured "
                        f"({smallest:,.0f} to {largest:,.0f}), so B_crit lies below it; measure smaller batches")
    batches = [int(b) if b == int(b) else b for b, _ in pairs]
    fit = TradeoffFit(fit_min_steps, fit_min_examples, math.sqrt(current / len(pairs)), batches)
    if fit.critical_batch > 4 * largest:
        fit.notes.append(f"B_crit {fit.critical_batch:,.0f} is beyond 4x the largest batch measured ({largest:,.0f}): "
                         "steps still fall almost as 1/B there, so S_min and B_crit are extrapolated "
                         "(B_crit is then a lower bound at best)")
    if fit.critical_batch < smallest / 4:
        fit.notes.append(f"B_crit {fit.critical_batch:,.0f} is below a quarter of the smallest batch measured "
                         f"({smallest:,.0f}): steps barely fall with the batch, so E_min and B_crit are "
                         "extrapolated")
    if len(pairs) == 2:
        fit.notes.append("two batch sizes: the curve passes through both points, nothing checks the model")
    return fit


# --- the noise scale a run measured ------------------------------------------------------------


@dataclass(frozen=True)
class NoiseReading:
    value: float
    epoch: float | None   # the record it was read from (None: given on the command line)
    note: str


def noise_scale_from_run(run_dir: str | Path, target_top1: float | None = None) -> NoiseReading:
    """The smoothed ``grad_noise_scale`` a run logged: at the evaluation nearest to where it first
    reached ``target_top1`` (the paper compares B_crit with the noise scale at the target), else its
    last resolved value."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (give a run directory trained with --noise-scale)")
    try:
        records = read_epochs(path)
    except DamagedRun as error:
        raise DataError(str(error)) from None
    measured = [r for r in records if "grad_noise_scale" in r]
    if not measured:
        raise UserError(f"{path}: no grad_noise_scale in the records (train with --noise-scale)")
    for record in measured:
        for key in ("grad_noise_scale", "grad_norm_sq", "grad_norm_sq_stderr"):
            value = record.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise DataError(f"{path}: epoch {record['epoch']}: {key} is {str(value)[:40]!r}, expected a "
                                "number or null; the file is damaged")
    resolved = [r for r in measured if r["grad_noise_scale"] is not None and r["grad_noise_scale"] > 0]
    if not resolved:
        raise UserError(f"{path}: every grad_noise_scale is unresolved (the smoothed |G|^2 was never positive); "
                        "give --noise-scale instead")
    unresolved = len(measured) - len(resolved)
    extra = f"; {unresolved} of {len(measured)} epochs unresolved" if unresolved else ""
    def spread(record: dict[str, Any]) -> str:
        # the relative standard error of B_simple is about that of |G|^2 (tr Sigma is far better determined)
        stderr, norm_sq = record.get("grad_norm_sq_stderr"), record.get("grad_norm_sq")
        return f" +- {100 * stderr / norm_sq:.0f}%" if stderr is not None and norm_sq else ""

    crossing = steps_to_target(records, target_top1) if target_top1 else None
    if crossing is not None:
        nearest = min(resolved, key=lambda r: (abs(r["epoch"] - crossing.epoch), -r["epoch"]))
        return NoiseReading(float(nearest["grad_noise_scale"]), float(nearest["epoch"]),
                            f"epoch {nearest['epoch']}{spread(nearest)}, nearest to where the run reached top-1 "
                            f"{target_top1:g} (epoch {crossing.epoch:.2f}){extra}")
    last = resolved[-1]
    reason = f"the run never reached top-1 {target_top1:g}; " if target_top1 else ""
    return NoiseReading(float(last["grad_noise_scale"]), float(last["epoch"]),
                        f"{reason}last resolved value, epoch {last['epoch']}{spread(last)}{extra}")


# --- report ------------------------------------------------------------------------------------


def format_report(points: list[RunPoint], fit: TradeoffFit | None, target_top1: float,
                  noise: NoiseReading | None = None) -> str:
    lines = [f"steps and examples to reach top-1 {target_top1:g}",
             f"{'run':<38} {'batch':>7} {'LR':>6} {'top-1':>6} {'steps':>9} {'examples':>12} {'epoch':>7} "
             f"{'fit S(B)':>9}  note"]
    for p in points:
        fitted = f"{fit.steps(p.batch_size):>9,.0f}" if fit else f"{'':>9}"
        final = "div." if p.diverged else ("-" if p.top1 is None else f"{100 * p.top1:.2f}")
        head = f"{p.run:<38} {p.batch_size:>7,} {'x' + format(p.lr_factor, 'g'):>6} {final:>6}"
        if p.steps is None:
            lines.append(f"{head} {'-':>9} {'-':>12} {'-':>7} {fitted}  {p.note}")
        else:
            note = p.note
            if p.measured and not p.used:
                note += ("; " if note else "") + "not used (another LR factor stands for this batch)"
            lines.append(f"{head} {p.steps:>9,.0f} {p.examples:>12,.0f} {p.epoch:>7.2f} {fitted}  {note}")
    if fit is None:
        return "\n".join(lines)
    lines += ["",
              f"fit   S_min {fit.min_steps:,.0f} steps, E_min {fit.min_examples:,.0f} examples, "
              f"B_crit = E_min / S_min = {fit.critical_batch:,.0f}  (rms error of log S: {fit.rms_log_residual:.3f}, "
              f"{len(fit.batch_sizes)} batch sizes)"]
    lines += [f"note  {note}" for note in fit.notes]
    if noise is not None:
        ratio = fit.critical_batch / noise.value
        lines.append(f"noise scale B_simple {noise.value:,.0f} ({noise.note}); "
                     f"B_crit / B_simple = {ratio:.2f}")
    return "\n".join(lines)


def plot_tradeoff(points: list[RunPoint], fit: TradeoffFit, target_top1: float,
                  noise: NoiseReading | None = None, title: str = "", min_top1: float = 0.0) -> bytes:
    """Steps against examples (log-log): the measured points labelled by batch size, the bounds
    (a run that reached the target at its first evaluation: at most that many steps; a run that
    never reached it: more steps than it ran), the fitted curve, its asymptotes S_min and E_min,
    B_crit (where S = 2 S_min and E = 2 E_min) and the measured noise scale (the fitted curve at
    B = B_simple, and the line E = B_simple S). Returns the PNG."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    used = [p for p in points if p.measured and p.used]
    other = [p for p in points if p.measured and not p.used]
    chosen = best_factors(points, min_top1)
    upper = [p for p in points if p.bound == "upper" and chosen.get(p.batch_size) in (None, p.lr_factor)]
    lower = [p for p in points if p.bound == "lower" and chosen.get(p.batch_size) in (None, p.lr_factor)]
    batches = [p.batch_size for p in used + upper + lower]
    low = min(batches + [fit.critical_batch]) / 8
    high = max(batches + [fit.critical_batch]) * 8
    if noise is not None:
        low, high = min(low, noise.value / 8), max(high, noise.value * 8)
    grid = [low * (high / low) ** (i / 199) for i in range(200)]
    ax.plot([fit.examples(b) for b in grid], [fit.steps(b) for b in grid], color="C0",
            label="fit: (S/S_min - 1)(E/E_min - 1) = 1")
    ax.axhline(fit.min_steps, color="C0", linestyle=":", linewidth=1)
    ax.axvline(fit.min_examples, color="C0", linestyle=":", linewidth=1)
    ax.annotate(f"S_min = {fit.min_steps:,.0f}", (fit.examples(high), fit.min_steps), textcoords="offset points",
                xytext=(-90, -12), fontsize=8, color="C0")
    # below the S_min line, where neither the curve nor the legend (upper right) is
    ax.annotate(f"E_min = {fit.min_examples:,.3g}", (fit.min_examples, fit.min_steps * 0.6), textcoords="offset points",
                xytext=(4, 0), fontsize=8, color="C0")
    ax.scatter([p.examples for p in used], [p.steps for p in used], color="C1", zorder=3, label="measured")
    if other:
        ax.scatter([p.examples for p in other], [p.steps for p in other], color="C1", alpha=0.35, zorder=3,
                   label="other LRs / not used")
    if upper:
        ax.scatter([p.bound_steps * p.batch_size for p in upper], [p.bound_steps for p in upper], marker="v", s=60,
                   facecolors="none", edgecolors="C4", zorder=3,
                   label="upper bound: reached at the first evaluation (not fitted)")
    if lower:
        ax.scatter([p.bound_steps * p.batch_size for p in lower], [p.bound_steps for p in lower], marker="^", s=60,
                   facecolors="none", edgecolors="C5", zorder=3,
                   label="lower bound: never reached in the steps run (not fitted)")
    for p in used + upper + lower:
        steps = p.steps if p.measured else p.bound_steps
        ax.annotate(f"B={p.batch_size}", (steps * p.batch_size, steps), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    crit = fit.critical_batch
    ax.scatter([fit.examples(crit)], [fit.steps(crit)], marker="*", s=180, color="C2", zorder=4,
               label=f"B_crit = {crit:,.0f} (fit)")
    if noise is not None:
        ax.scatter([fit.examples(noise.value)], [fit.steps(noise.value)], marker="D", s=60, color="C3", zorder=4,
                   label=f"B_simple = {noise.value:,.0f} (measured, on the fitted curve)")
        steps_line = [fit.min_steps * 0.5, max(fit.steps(b) for b in grid)]
        ax.plot([noise.value * s for s in steps_line], steps_line, color="C3", linestyle="--", linewidth=1,
                label="E = B_simple x S")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("examples E to reach the target (images)")
    ax.set_ylabel("optimizer steps S to reach the target")
    ax.set_title(title or f"Steps versus examples to top-1 {target_top1:g}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


# --- command line -------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_dir", help="a study directory (runs may still be training)")
    parser.add_argument("--target-top1", type=_fraction, required=True, metavar="X",
                        help="test top-1 in (0, 1] every batch size should reach, e.g. 0.90")
    parser.add_argument("--variant", default="lars", metavar="NAME",
                        help="which variant of the study (a plain run: its optimizer) (default: lars)")
    parser.add_argument("--augmentation", default=None, choices=AUGMENTATIONS,
                        help="which augmentation level, when the study has several (default: the only one)")
    parser.add_argument("--lr-choice", default="best", choices=LR_CHOICES,
                        help="the runs that stand for a batch size when it has several LR factors: best (the "
                             "factor with the best final top-1, as `report` ranks them) or fastest (the fewest "
                             "steps to the target, per seed) (default: best)")
    parser.add_argument("--noise-scale", type=_fraction, default=None, metavar="N",
                        help="a measured gradient noise scale to mark on the plot (default: none)")
    parser.add_argument("--noise-run", default=None, metavar="DIR",
                        help="read the noise scale from this run's metrics.jsonl (trained with --noise-scale)")
    parser.add_argument("--out", default="", metavar="DIR",
                        help="where to write critical_batch.png and critical_batch.json (default: STUDY_DIR)")
    parser.add_argument("--merge", action="append", default=[], metavar="RESULTS_JSON",
                        help="also count the runs of an earlier report's results.json whose run directories are "
                             "not in STUDY_DIR (runs done elsewhere); repeatable; a run directory wins over a row")
    parser.add_argument("--strict", action="store_true",
                        help="stop on a damaged run (default: leave it out with a warning)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")


def check_arguments(args: argparse.Namespace) -> None:
    """Every number and name of the command within its range, before any file is read."""
    if not (math.isfinite(args.target_top1) and 0 < args.target_top1 <= 1):
        raise ConfigError(f"--target-top1: expected a fraction in (0, 1], got {args.target_top1}")
    if args.noise_scale is not None and args.noise_run:
        raise ConfigError("give --noise-scale N or --noise-run DIR, not both")
    if args.noise_scale is not None and not (math.isfinite(args.noise_scale) and args.noise_scale > 0):
        raise ConfigError(f"--noise-scale: expected a finite number > 0, got {args.noise_scale}")
    if not READABLE_VARIANT.fullmatch(args.variant):
        raise ConfigError(f"--variant {args.variant[:80]!r}: not a variant name (letters, digits, '_', '-', '.')")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    warnings: list[str] = []
    points = study_points(Path(args.study_dir), args.target_top1, args.variant, args.augmentation,
                          strict=args.strict, warnings=warnings, merge=args.merge)
    for warning in warnings:
        print(f"largebatch: warning: {warning}", file=sys.stderr)
    min_top1 = study_min_top1(Path(args.study_dir))
    by_batch = steps_by_batch(points, args.lr_choice, min_top1)
    refusal = fit_refusal(points, by_batch)
    if refusal:
        print(format_report(points, None, args.target_top1))
        raise UserError(refusal)
    try:
        fit = fit_tradeoff(list(by_batch), list(by_batch.values()))
    except UserError:
        print(format_report(points, None, args.target_top1))
        raise
    noise = None
    if args.noise_scale is not None:
        noise = NoiseReading(args.noise_scale, None, "given with --noise-scale")
    elif args.noise_run:
        noise = noise_scale_from_run(args.noise_run, args.target_top1)
    result = {"target_top1": args.target_top1, "variant": args.variant, "lr_choice": args.lr_choice,
              "points": [asdict(p) for p in points], "steps_by_batch": by_batch,
              "fit": fit.to_dict(),
              "noise_scale": asdict(noise) if noise else None,
              "critical_batch_over_noise_scale": fit.critical_batch / noise.value if noise else None,
              "skipped": warnings}
    files = {"critical_batch.json": (json.dumps(result, indent=2) + "\n").encode(),
             "critical_batch.png": plot_tradeoff(points, fit, args.target_top1, noise,
                                                 title=f"{args.variant}: steps versus examples to top-1 "
                                                       f"{args.target_top1:g}", min_top1=min_top1)}
    out = Path(args.out or args.study_dir)
    from largebatch.study.outputs import write_outputs
    write_outputs(out, files, Path(args.study_dir))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(points, fit, args.target_top1, noise))
        print(f"\nwrote {out / 'critical_batch.png'} and {out / 'critical_batch.json'}")
    return 0
