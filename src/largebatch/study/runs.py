"""Reading run directories for reports: every file validated, a damaged run named and skipped.

A run directory holds ``config.toml``, ``metrics.jsonl`` and, once finished (or diverged inside a
study), ``summary.json``. Each file is untrusted: :func:`read_run` checks that it is UTF-8, parses,
and holds the keys a report uses with the right types and ranges, and raises :class:`DamagedRun`
(one line: which file, what is wrong) otherwise. ``report`` and ``critical-batch`` skip such a
run with a warning, or stop on it with ``--strict``.

A run's place in its study (variant, LR factor) is read back from its folder name
(:mod:`largebatch.study.names`) and checked against its config.toml; a folder whose name is not
a study run's is a plain run, labelled by its optimizer.
"""

from __future__ import annotations

import json
import math
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from largebatch import config as cfg
from largebatch.errors import ConfigError, DataError, UserError
from largebatch.progress import epoch_records, read_metrics
from largebatch.study.names import READABLE_VARIANT, parse_run_name

MAX_SMALL_FILE = 1 << 20      # config.toml, summary.json: 1 MiB is 1,000 times what a run writes
MAX_METRICS_FILE = 1 << 30    # metrics.jsonl: a 90-epoch ImageNet run writes a few MB


class DamagedRun(UserError):
    """A run directory whose files cannot be trusted; the message names the file and the fault."""


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float
        return False


def _plain_text(text: str) -> bool:
    """No control characters: safe to print on one line."""
    return not any(unicodedata.category(c) == "Cc" for c in text)


def peak_lr(config: cfg.Config) -> float:
    """The run's peak LR, from :func:`largebatch.derive.derive` (it depends on the config alone:
    optimizer.lr, the scaling rule and the batch size; the image counts only set step numbers)."""
    from largebatch.derive import derive
    return derive(config, 1, config.run.batch_size, 1).peak_lr


def find_run_dirs(directory: Path) -> list[Path]:
    """Run directories (config.toml + summary.json) at or below ``directory``."""
    directory = Path(directory)
    if (directory / "summary.json").is_file():
        return [directory]
    return sorted(p.parent for p in directory.rglob("summary.json") if (p.parent / "config.toml").is_file())


def find_started_run_dirs(directory: Path) -> list[Path]:
    """Run directories that have started (config.toml + metrics.jsonl), finished or not."""
    directory = Path(directory)
    if (directory / "metrics.jsonl").is_file() and (directory / "config.toml").is_file():
        return [directory]
    return sorted(p.parent for p in directory.rglob("metrics.jsonl") if (p.parent / "config.toml").is_file())


def _read_text(path: Path, limit: int) -> str:
    try:
        size = path.stat().st_size
        if size > limit:
            raise DamagedRun(f"{path}: {size:,} bytes, more than a run writes ({limit:,}); not read")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DamagedRun(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise DamagedRun(f"{path}: cannot read ({error.strerror or error})") from None


def read_config(path: Path) -> cfg.Config:
    """config.toml of a run, validated by the recipe code. Keys this version does not know are
    left out (a run written by another version still reports); a known key with a bad value, or
    a file that is not TOML, makes the run damaged."""
    try:
        raw = tomllib.loads(_read_text(path, MAX_SMALL_FILE))
    except tomllib.TOMLDecodeError as error:
        raise DamagedRun(f"{path}: not valid TOML ({str(error).splitlines()[0]})") from None
    recipe: dict[str, Any] = {}
    for section in cfg.SECTIONS:
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise DamagedRun(f"{path}: [{section}] is not a table")
        known = {f.name for f in cfg.section_fields(section)}
        recipe[section] = {k: v for k, v in values.items() if k in known}
    meta = {key: raw[key] for key in ("recipe", "description") if isinstance(raw.get(key), str)}
    try:
        return cfg.build_config({**recipe, "": meta})
    except ConfigError as error:
        raise DamagedRun(f"{path}: {error}") from None


def _number(where: object, data: dict[str, Any], key: str, *, low: float = 0.0, high: float = math.inf,
            integer: bool = False, nullable: bool = False, default: Any = ...) -> Any:
    """``data[key]``: a finite number in [low, high] (an integer if ``integer``; None if
    ``nullable``), else DamagedRun naming the file and the key."""
    if key not in data:
        if default is not ...:
            return default
        raise DamagedRun(f"{where}: no {key!r}")
    value = data[key]
    if value is None and nullable:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not _finite(value) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise DamagedRun(f"{where}: {key} is {str(value)[:40]!r}, expected {kind} in [{low:g}, {high:g}]"
                         + (" or null" if nullable else ""))
    return value


def read_summary(path: Path) -> dict[str, Any]:
    """summary.json of a finished (or diverged) run, with the keys a report uses checked."""
    try:
        data = json.loads(_read_text(path, MAX_SMALL_FILE))
    except (json.JSONDecodeError, RecursionError):
        raise DamagedRun(f"{path}: not JSON (half-written or damaged)") from None
    if not isinstance(data, dict):
        raise DamagedRun(f"{path}: not a JSON object")
    diverged = data.get("diverged", False)
    if not isinstance(diverged, bool):
        raise DamagedRun(f"{path}: diverged is {str(diverged)[:40]!r}, expected true or false")
    summary = {
        "diverged": diverged,
        "global_batch_size": _number(path, data, "global_batch_size", low=1, integer=True),
        "top1": _number(path, data, "top1", high=1.0, nullable=True),
        "top5": _number(path, data, "top5", high=1.0, nullable=True, default=None),
        "best_top1": _number(path, data, "best_top1", high=1.0, nullable=True, default=None),
        "epochs": _number(path, data, "epochs", low=1, integer=True),
        "steps": _number(path, data, "steps", integer=True),
        "wall_time_s": _number(path, data, "wall_time_s", default=0.0),
        "train_time_s": _number(path, data, "train_time_s", default=0.0),
        "images_per_s": _number(path, data, "images_per_s", default=0.0),
    }
    if not diverged and summary["top1"] is None:
        raise DamagedRun(f"{path}: a finished run with no top-1 (nothing was evaluated)")
    return summary


def read_epochs(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a metrics.jsonl, with ``epoch``, ``step``, ``top1`` checked."""
    if path.is_file():
        try:
            size = path.stat().st_size
        except OSError as error:
            raise DamagedRun(f"{path}: cannot read ({error.strerror or error})") from None
        if size > MAX_METRICS_FILE:
            raise DamagedRun(f"{path}: {size:,} bytes, more than a run writes ({MAX_METRICS_FILE:,}); not read")
    try:
        records = epoch_records(read_metrics(path))
    except DataError as error:
        raise DamagedRun(str(error)) from None
    except OSError as error:
        raise DamagedRun(f"{path}: cannot read ({error.strerror or error})") from None
    for index, record in enumerate(records, 1):
        where = f"{path} (epoch record {index})"
        _number(where, record, "epoch")
        _number(where, record, "step")
        _number(where, record, "top1", high=1.0, nullable=True, default=None)
    return records


@dataclass(frozen=True)
class RunFiles:
    """A run directory read and checked: its place in a study (None fields for a plain run)."""

    directory: Path
    config: cfg.Config
    summary: dict[str, Any] | None    # None: not finished
    epochs: list[dict[str, Any]]
    variant: str | None
    lr_factor: float


def read_run(run_dir: Path, need_summary: bool = True) -> RunFiles:
    """Read and check one run directory; DamagedRun names what is wrong."""
    config = read_config(run_dir / "config.toml")
    summary = read_summary(run_dir / "summary.json") if need_summary or (run_dir / "summary.json").is_file() else None
    metrics = run_dir / "metrics.jsonl"
    epochs = read_epochs(metrics) if metrics.is_file() else []
    if summary is not None and summary["global_batch_size"] != config.run.batch_size:
        raise DamagedRun(f"{run_dir}: summary.json says batch {summary['global_batch_size']}, config.toml "
                         f"{config.run.batch_size}")
    point = parse_run_name(run_dir.name)
    if point is None:
        return RunFiles(run_dir, config, summary, epochs, None, 1.0)
    stated = {"batch": (point.batch_size, config.run.batch_size), "seed": (point.seed, config.run.seed),
              "augmentation": (point.augmentation, config.data.augmentation)}
    for what, (named, configured) in stated.items():
        if named != configured:
            raise DamagedRun(f"{run_dir}: the folder name says {what} {named}, its config.toml {configured} "
                             "(renamed or copied over?)")
    return RunFiles(run_dir, config, summary, epochs, point.variant, point.lr_factor)


def result_row(run: RunFiles, root: Path) -> dict[str, Any]:
    """One results.json object for a finished run."""
    summary = run.summary
    assert summary is not None
    config, records = run.config, run.epochs
    try:
        lr = peak_lr(config)
    except UserError as error:
        raise DamagedRun(f"{run.directory / 'config.toml'}: no peak LR can be derived ({error})") from None
    return {
        "run": str(run.directory.relative_to(root)) if run.directory != root else run.directory.name,
        "variant": run.variant,
        "optimizer": config.optimizer.name,
        "batch_size": summary["global_batch_size"],
        "augmentation": config.data.augmentation,
        "seed": config.run.seed,
        "lr_factor": run.lr_factor,
        "lr": lr,
        "diverged": summary["diverged"],
        "top1": None if summary["diverged"] else summary["top1"],
        "top5": None if summary["diverged"] else summary["top5"],
        "best_top1": summary["best_top1"],
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "wall_s": summary["wall_time_s"],
        "train_s": summary["train_time_s"],
        "images_per_s": summary["images_per_s"],
        "final_train_loss": records[-1].get("train_loss") if records else None,
        # kept in results.json so that a report merged from it (--merge) can still plot epochs
        "top1_by_epoch": [[r["epoch"], r["top1"]] for r in records if r.get("top1") is not None],
        # the optimizer step of each of those evaluations: critical-batch --merge counts steps to a target
        "step_by_epoch": [[r["epoch"], r["step"]] for r in records if r.get("top1") is not None],
    }


def sort_key(row: dict[str, Any]) -> tuple:
    return (row["variant"] or "", row["optimizer"], row["augmentation"], row["batch_size"], row["lr_factor"],
            row["seed"], row["run"])


def collect_runs(directory: Path, strict: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """(one row per finished run at or below ``directory``, one warning per damaged run skipped).
    ``strict``: a damaged run raises instead."""
    directory = Path(directory)
    rows, warnings = [], []
    for run_dir in find_run_dirs(directory):
        try:
            rows.append(result_row(read_run(run_dir), directory))
        except DamagedRun as error:
            if strict:
                raise
            warnings.append(f"skipped run {run_dir}: {error}")
    rows.sort(key=sort_key)
    return rows, warnings


# What a merged row must hold: the axes of the study and the result.
RESULT_KEYS = ("run", "batch_size", "optimizer", "augmentation", "seed", "top1", "epochs", "wall_s")


def check_row(path: Path, index: int, row: Any) -> dict[str, Any]:
    """A results.json object checked and completed with defaults (rows written before a key
    existed: ``lr_factor`` 1, ``diverged`` false ...); DamagedRun names the row and the key."""
    if not isinstance(row, dict):
        raise DamagedRun(f"{path}: run {index} is not a JSON object")
    name = row.get("run")
    where = f"{path}: run {index} ({str(name)[:60]!r})"
    missing = [k for k in RESULT_KEYS if k not in row]
    if missing:
        raise DamagedRun(f"{where} lacks {', '.join(missing)}; results.json rows need {', '.join(RESULT_KEYS)}")
    if not isinstance(name, str) or not name or not _plain_text(name):
        raise DamagedRun(f"{where}: run is not a plain name")
    variant = row.get("variant")
    if variant is not None and (not isinstance(variant, str) or not READABLE_VARIANT.fullmatch(variant)):
        raise DamagedRun(f"{where}: variant {str(variant)[:40]!r} is not a variant name")
    point = parse_run_name(Path(name).name)
    if point is not None:  # the run's name states its grid point: it wins over the row's own fields
        variant = point.variant
    if row["optimizer"] not in cfg.OPTIMIZERS:
        raise DamagedRun(f"{where}: optimizer {str(row['optimizer'])[:40]!r} is not one of {', '.join(cfg.OPTIMIZERS)}")
    if row["augmentation"] not in cfg.AUGMENTATIONS:
        raise DamagedRun(f"{where}: augmentation {str(row['augmentation'])[:40]!r} is not one of "
                         f"{', '.join(cfg.AUGMENTATIONS)}")
    diverged = row.get("diverged", False)
    if not isinstance(diverged, bool):
        raise DamagedRun(f"{where}: diverged is not true or false")
    checked = dict(row)
    checked.update(
        variant=variant, diverged=diverged,
        batch_size=_number(where, row, "batch_size", low=1, integer=True),
        seed=_number(where, row, "seed", high=2**32 - 1, integer=True),
        top1=_number(where, row, "top1", high=1.0, nullable=diverged),
        top5=_number(where, row, "top5", high=1.0, nullable=True, default=None),
        best_top1=_number(where, row, "best_top1", high=1.0, nullable=True, default=None),
        epochs=_number(where, row, "epochs", low=1, integer=True),
        steps=_number(where, row, "steps", integer=True, default=0),
        wall_s=_number(where, row, "wall_s"),
        train_s=_number(where, row, "train_s", default=0.0),
        images_per_s=_number(where, row, "images_per_s", default=0.0),
        lr=_number(where, row, "lr", nullable=True, default=None),
        lr_factor=point.lr_factor if point else _number(where, row, "lr_factor", low=0.0, default=1.0),
        final_train_loss=row.get("final_train_loss") if isinstance(row.get("final_train_loss"), (int, float)) else None,
    )
    if checked["lr_factor"] <= 0:
        raise DamagedRun(f"{where}: lr_factor must be positive")
    if diverged:
        checked["top1"] = None
    epochs = row.get("top1_by_epoch", [])
    if not isinstance(epochs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         and _finite(v) for v in p) and 0 <= p[1] <= 1
            for p in epochs):
        raise DamagedRun(f"{where}: top1_by_epoch is not a list of [epoch, top-1] pairs")
    checked["top1_by_epoch"] = epochs
    steps = row.get("step_by_epoch")
    if steps is not None and not (
            isinstance(steps, list) and len(steps) == len(epochs) and all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                             and _finite(v) and v >= 0 for v in p)
                and p[0] == e[0] for p, e in zip(steps, epochs))):
        raise DamagedRun(f"{where}: step_by_epoch is not a list of [epoch, step] pairs matching top1_by_epoch")
    if steps is None:
        checked.pop("step_by_epoch", None)
    source = row.get("source")
    checked["source"] = source if isinstance(source, str) and _plain_text(source) else None
    if checked["source"] is None:
        checked.pop("source")
    return checked


def study_min_top1(directory: Path) -> float:
    """The ``min_top1`` of the study file a study directory holds (``study.toml``), else 0."""
    try:
        value = tomllib.loads((directory / "study.toml").read_text(encoding="utf-8")).get("study", {}).get("min_top1", 0.0)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        return 0.0
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1 else 0.0


def load_results(path: str | Path, strict: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of an earlier report's results.json (``--merge``): a file that is not a JSON list
    of objects is an error; a bad row is skipped with a warning (an error with ``strict``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such results file; give the results.json written by `largebatch report`")
    try:
        text = _read_text(path, 64 * MAX_SMALL_FILE)
        rows = json.loads(text)
    except DamagedRun as error:
        raise UserError(str(error)) from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not JSON ({error.msg} at line {error.lineno}); give a results.json written by "
                        "`largebatch report`") from None
    except RecursionError:
        raise UserError(f"{path}: not a results.json (nested too deeply)") from None
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a JSON list of run objects, as `largebatch report` writes in results.json")
    checked, warnings = [], []
    for index, row in enumerate(rows):
        try:
            checked.append(check_row(path, index, row))
        except DamagedRun as error:
            if strict:
                raise
            warnings.append(f"skipped {error}")
    return checked, warnings


def merge_results(rows: list[dict[str, Any]], merged: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """``rows`` plus the rows of ``merged`` whose run name is not among them, marked with ``source``."""
    present = {r["run"] for r in rows}
    added = [{**r, "source": r.get("source") or source} for r in merged if r["run"] not in present]
    out = rows + added
    out.sort(key=sort_key)
    return out
