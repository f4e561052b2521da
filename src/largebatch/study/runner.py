"""Running a study: the grid, then the widened LR factors, then the extra seeds of each best factor.

Each run is an ordinary run directory ``<out>/<name>`` (:mod:`largebatch.study.names`). A run with
a ``summary.json`` is complete and skipped; an interrupted one resumes from its last checkpoint.
So a study stopped anywhere is resumed by running the same command again, and runs copied in
from elsewhere (same name) count as done. So do the rows of results.json files given with
``--merge`` (runs done on other machines, whose directories are not here): each is checked
against the run this study would make under its name (epochs, optimizer, peak LR), skipped, and
its result used to widen the sweeps and place the extra seeds; a run directory wins over a row.

Order of work, each step decided from the results on disk:

1. every run of the grid (variants x batch sizes x augmentations x seeds x LR factors);
2. for a study that sweeps the LR, each cell's sweep widened while its best factor is at an
   edge (:func:`largebatch.study.sweep.next_factor`), once every run of the cell is complete;
3. ``best_seeds``: those seeds at each cell's best factor, once its sweep is final.

A run whose loss diverges is a result (``summary.json`` says ``diverged``) and the study goes
on. A run stopped by SIGTERM/SIGINT stops the study: :class:`largebatch.errors.Interrupted`
propagates and the command exits with 128 + the signal number.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from largebatch import rundir
from largebatch.errors import ConfigError, Interrupted
from largebatch.study.names import GridPoint, parse_run_name
from largebatch.study.outputs import REPORT_FILES, RUN_FILES
from largebatch.study.runs import DamagedRun, load_results, peak_lr, read_run
from largebatch.study.spec import Study, StudyRun
from largebatch.study.sweep import Result, analyse, curve, failed_below, next_factor

# What a study directory may hold besides its run folders: the study file's copy, the outputs of
# report and critical-batch (and their PNG plots), and hidden files (locks, atomic writes).
STUDY_FILES = ("study.toml",) + REPORT_FILES


def train_run(config) -> dict[str, Any]:
    """Train one run of the study, resuming it if it has a checkpoint: the study's only call of
    the training engine."""
    from largebatch.train import train
    return train(config, resume="auto")


def check_study_directory(out: Path) -> None:
    """Refuse a study directory that belongs to something else: a file, a run directory, or a
    folder holding anything a study does not write (named in the message)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"study directory {out} is a file; give another --out")
    for name in RUN_FILES:
        if (out / name).exists():
            raise ConfigError(f"study directory {out} is a run directory (it holds {name}); give another --out")
    for entry in sorted(out.iterdir()):
        name = entry.name
        if name.startswith(".") or name in STUDY_FILES or (name.endswith(".png") and entry.is_file()):
            continue
        if entry.is_dir() and parse_run_name(name) is not None:
            continue
        raise ConfigError(f"study directory {out} holds {name!r}, which no study writes: it belongs to something "
                          "else; give another --out, or move it away")


class StudyRunner:
    """Runs the selected runs of a study in the order above. ``only``/``exclude``: run only the
    runs whose name contains / does not contain this text (widened and extra-seed runs too);
    ``settings``: ``section.key`` values set on every selected run (``--set``)."""

    def __init__(self, study: Study, only: str = "", exclude: str = "", dry_run: bool = False,
                 settings: dict[str, Any] | None = None, log: Callable[[str], None] = print,
                 merge: list[str] | tuple[str, ...] = ()):
        self.study, self.only, self.exclude, self.dry_run = study, only, exclude, dry_run
        self.settings = settings or {}
        self.log = log
        self.done: list[Path] = []
        self.count = 0
        self.merged: dict[str, dict[str, Any]] = {}  # run name -> results.json row of a run done elsewhere
        for source in merge:
            self.merge_rows(source)

    def merge_rows(self, source: str) -> None:
        """Take the rows of ``source`` (a results.json) that name a run of this study; a row whose
        epochs, optimizer or peak LR differ from the run this study makes under its name is an
        error (it was another experiment), rows of other studies are left alone."""
        rows, warnings = load_results(source)
        for warning in warnings:
            self.log(f"warning: {warning}")
        taken = 0
        for row in rows:
            name = Path(row["run"]).name
            point = parse_run_name(name)
            if point is None or point.variant not in self.study.recipes or name in self.merged:
                continue
            try:
                run = self.study.make_run(point.variant, point.batch_size, point.augmentation, point.seed,
                                          point.lr_factor)
            except ConfigError:
                continue
            if run.name != name:
                continue
            config = run.config
            expected_lr = peak_lr(config)
            differs = [what for what, same in (
                ("epochs", row["epochs"] == config.run.epochs),
                ("optimizer", row["optimizer"] == config.optimizer.name),
                ("peak LR", row["lr"] is None or math.isclose(row["lr"], expected_lr, rel_tol=1e-6)))
                if not same]
            if differs:
                raise ConfigError(f"{source}: run {name} differs from this study's run of that name in "
                                  f"{', '.join(differs)}: it is another experiment; merge it into another study")
            self.merged[name] = row
            taken += 1
        self.log(f"merged {taken} run(s) of this study from {source}")

    def selected(self, name: str) -> bool:
        return (not self.only or self.only in name) and not (self.exclude and self.exclude in name)

    def run(self) -> list[Path]:
        """Run the study; returns the directories of the selected runs that are complete."""
        study = self.study
        check_study_directory(study.out)
        if self.settings:  # every selected grid run with the settings, validated before any runs
            for run in study.runs:
                if self.selected(run.name):
                    self.with_settings(run)
        if not self.dry_run:
            from largebatch.checkpoint import write_atomic
            # The study directory's lock is held only while its own files are written: several
            # study processes with disjoint --only selections may share it (each run directory is
            # locked by its run for the whole run).
            with rundir.RunLock(study.out, " ".join(sys.argv), wait_s=rundir.STUDY_LOCK_WAIT_S):
                check_study_directory(study.out)
                write_atomic(study.out / "study.toml", study.path.read_bytes())
        for run in study.runs:
            self.execute(run, "")
        if study.sweeps:
            for cell in self.cells():
                self.widen(cell)
        if study.best_seeds:
            for cell in self.cells():
                self.add_seeds(cell)
        return self.done

    # --- one run ---------------------------------------------------------------------------

    def execute(self, run: StudyRun, why: str) -> None:
        if not self.selected(run.name):
            return
        self.count += 1
        out = Path(run.config.run.out)
        label = f"[{self.count}] {run.name}" + (f" ({why})" if why else "")
        if (out / "summary.json").is_file():
            note = " (--set not applied)" if self.settings else ""
            self.log(f"{label}: complete, skipped{note}")
            self.done.append(out)
            return
        if run.name in self.merged:
            self.log(f"{label}: done elsewhere (merged results), skipped")
            return
        if self.dry_run:
            self.log(f"{label}: would run")
            return
        self.log(f"{label}: running")
        if self.settings:
            run = self.with_settings(run)
        from largebatch.train import DivergenceError
        try:
            result = train_run(run.config)
        except DivergenceError as error:  # a result of the study, not a failure of it
            self.log(f"{run.name}: diverged: {error}")
            write_divergence_summary(run, out, error)
            self.done.append(out)
            return
        except rundir.RunDirectoryError as error:
            if (out / rundir.LOCK_NAME).exists():  # another process is training this run: leave it to it
                self.log(f"{label}: skipped: {error}")
                return
            raise ConfigError(f"study run {run.name}: {error} (or delete {out} to train this run again)") from None
        if isinstance(result, dict) and "stopped_at_step" in result:
            # an engine that returns on a signal instead of raising Interrupted: the study stops the same way
            number = int(result.get("signal_number", signal.SIGTERM))
            raise Interrupted(f"study stopped: run {run.name} was stopped by a signal at step "
                              f"{result['stopped_at_step']} (checkpoint saved); run the same command again to resume",
                              number)
        self.done.append(out)

    def with_settings(self, run: StudyRun) -> StudyRun:
        """The run with the ``--set`` values, validated with the rest of its config."""
        p = run.point
        return self.study.make_run(p.variant, p.batch_size, p.augmentation, p.seed, p.lr_factor, self.settings)

    # --- cells: widening and extra seeds -----------------------------------------------------

    def cells(self) -> Iterator[tuple[str, str, int]]:
        """The cells of the grid, in grid order."""
        seen: dict[tuple[str, str, int], None] = {}
        for run in self.study.runs:
            seen.setdefault(run.point.cell, None)
        return iter(seen)

    def cell_results(self, cell: tuple[str, str, int], points: list[GridPoint]) -> list[Result] | None:
        """The results of these runs of a cell, or None (with a line saying why) when one is not
        complete yet or is damaged."""
        results = []
        for point in points:
            directory = self.study.out / point.name
            if not (directory / "summary.json").is_file():
                if point.name in self.merged:  # done elsewhere; a run directory here wins
                    row = self.merged[point.name]
                    results.append(Result(point.lr_factor, point.seed, row["top1"], row["diverged"]))
                    continue
                if not self.dry_run:
                    self.log(f"{_cell_name(cell)}: waiting for {point.name} (not complete) before deciding more runs")
                return None
            try:
                summary = read_run(directory).summary
            except DamagedRun as error:
                self.log(f"{_cell_name(cell)}: cannot decide more runs: {error}")
                return None
            results.append(Result(point.lr_factor, point.seed, summary["top1"], summary["diverged"]))
        return failed_below(results, self.study.min_top1)

    def cell_points(self, cell: tuple[str, str, int], seeds: list[int]) -> list[GridPoint]:
        """The grid points of a cell for ``seeds`` at every factor it has so far (the study's
        factors and the widened ones found on disk)."""
        variant, augmentation, batch = cell
        factors = set(self.study.lr_factors)
        for name in self.merged:
            point = parse_run_name(name)
            if point.cell == cell and point.with_factor == self.study.sweeps and point.seed in self.study.seeds:
                factors.add(point.lr_factor)
        if self.study.out.is_dir():
            for entry in self.study.out.iterdir():
                point = parse_run_name(entry.name)
                if (point is not None and point.cell == cell and point.with_factor == self.study.sweeps
                        and point.seed in self.study.seeds and (entry / "summary.json").is_file()):
                    factors.add(point.lr_factor)
        return [GridPoint(variant, batch, augmentation, seed, factor, self.study.sweeps)
                for factor in sorted(factors) for seed in seeds]

    def widen(self, cell: tuple[str, str, int]) -> None:
        study = self.study
        for point in self.cell_points(cell, study.seeds):  # factors added by an earlier invocation
            if point.lr_factor not in study.lr_factors:
                self.execute(study.make_run(cell[0], cell[2], cell[1], point.seed, point.lr_factor), "widening")
        while True:
            results = self.cell_results(cell, self.cell_points(cell, study.seeds))
            if results is None:
                return
            points = curve(results, set(study.seeds))
            widening = next_factor(points, min(study.lr_factors), max(study.lr_factors), study.widen_limit)
            if widening is None:
                if analyse(results, set(study.seeds)).at_edge:
                    self.log(f"{_cell_name(cell)}: the best factor is still at an edge after widen_limit "
                             f"({study.widen_limit}) added factors")
                return
            try:
                new = [study.make_run(cell[0], cell[2], cell[1], seed, widening.lr_factor) for seed in study.seeds]
            except ConfigError as error:
                self.log(f"{_cell_name(cell)}: cannot widen to x{widening.lr_factor:g}: {error}")
                return
            if any(run.name in {p.name for p in self.cell_points(cell, study.seeds)} for run in new):
                return  # the factor prints like one already swept: nothing new to learn
            for run in new:
                self.execute(run, f"widening: {widening.reason}")
            if self.dry_run or not all(self.selected(run.name) for run in new):
                return

    def add_seeds(self, cell: tuple[str, str, int]) -> None:
        study = self.study
        results = self.cell_results(cell, self.cell_points(cell, study.seeds))
        if results is None:
            return
        sweep = analyse(results, set(study.seeds))
        if study.sweeps and next_factor(sweep.points, min(study.lr_factors), max(study.lr_factors),
                                        study.widen_limit):
            return  # the sweep is still widening (a dry run, or runs not selected)
        if sweep.best is None:
            self.log(f"{_cell_name(cell)}: every factor diverged; no extra seeds")
            return
        for seed in study.best_seeds:
            run = study.make_run(cell[0], cell[2], cell[1], seed, sweep.best.lr_factor)
            self.execute(run, f"seed {seed} of the best factor x{sweep.best.lr_factor:g}")


def _cell_name(cell: tuple[str, str, int]) -> str:
    variant, augmentation, batch = cell
    return f"{variant} at batch {batch} ({augmentation})"


def run_study(study: Study, only: str = "", dry_run: bool = False, exclude: str = "",
              settings: dict[str, Any] | None = None, merge: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """Run every incomplete selected run of the study (:class:`StudyRunner`) that no results.json
    of ``merge`` holds; returns the run directories of the selected runs that are complete."""
    return StudyRunner(study, only, exclude, dry_run, settings, merge=merge).run()


def write_divergence_summary(run: StudyRun, out: Path, error) -> None:
    """summary.json for a run whose loss became non-finite: the study records it and goes on."""
    from largebatch.checkpoint import write_atomic
    from largebatch.errors import DataError
    from largebatch.progress import epoch_records, read_metrics

    try:
        records = epoch_records(read_metrics(out / "metrics.jsonl")) if (out / "metrics.jsonl").is_file() else []
    except DataError:
        records = []
    evaluated = [r for r in records if isinstance(r.get("top1"), (int, float))]
    last = records[-1] if records else {}
    def known(value: float) -> float | None:  # DivergenceError leaves what it does not know as NaN or -1
        return value if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0 else None

    summary = {"diverged": True, "diverged_at_step": known(error.step), "diverged_at_epoch": known(error.epoch),
               "diverged_lr": known(error.lr), "message": str(error),
               "top1": None, "top5": None, "best_top1": max((r["top1"] for r in evaluated), default=None),
               "train_time_s": last.get("train_time_s", 0.0), "wall_time_s": last.get("elapsed_s", 0.0),
               "images_per_s": last.get("images_per_s", 0.0),
               "epochs": run.config.run.epochs, "steps": max(error.step, 0), "global_batch_size": run.batch_size,
               "optimizer": run.config.optimizer.name}
    write_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
