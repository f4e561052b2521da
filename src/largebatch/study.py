"""Batch-size studies: a grid of training runs from one recipe, resumable, reported together.

A study file (TOML) names a base recipe, the axes, and one table of recipe overrides per
optimizer variant::

    [study]
    base = "fashion_mnist"            # the training recipe every run starts from
    batch_sizes = [128, 1024, 4096]   # global batch sizes
    epochs = 20                       # the same epoch budget for every run
    seeds = [0]
    augmentations = ["none"]          # data.augmentation levels
    lr_factors = [1.0]                # an LR search: each factor multiplies the variant's lr
    out = "runs/study"

    [variants.lars]                   # recipe sections, as in a recipe file
    optimizer = { name = "lars", lr = 10.0 }
    schedule = { scaling = "sqrt", base_batch_size = 4096 }

Each run is an ordinary run directory ``<out>/<variant>-b<batch>-<augmentation>-s<seed>[-lr<f>]``.
A run with a ``summary.json`` is complete and skipped; an interrupted one resumes from its last
checkpoint. So an interrupted study is resumed by running the same command again.
"""

from __future__ import annotations

import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from largebatch import config as cfg
from largebatch.errors import ConfigError

STUDY_DIR = cfg.RECIPE_DIR / "studies"
STUDY_KEYS = {"base", "batch_sizes", "epochs", "seeds", "augmentations", "lr_factors", "out", "description"}


@dataclass
class StudyRun:
    name: str
    variant: str
    batch_size: int
    augmentation: str
    seed: int
    lr_factor: float
    config: cfg.Config = field(repr=False)


@dataclass
class Study:
    path: Path
    out: Path
    description: str
    runs: list[StudyRun]


def _int_list(path: Path, key: str, value: Any, minimum: int = 0) -> list[int]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value):
        raise ConfigError(f"study {path}: study.{key} must be a non-empty list of integers >= {minimum}")
    return value


def load_study(path_or_name: str, out: str = "") -> Study:
    """Read and validate a study file into its list of runs (every config validated up front)."""
    path = Path(path_or_name)
    if not path.is_file():
        builtin = STUDY_DIR / f"{path_or_name}.toml"
        if not builtin.is_file():
            names = ", ".join(sorted(p.stem for p in STUDY_DIR.glob("*.toml")))
            raise ConfigError(f"study file {path_or_name} not found (built-in studies: {names})")
        path = builtin
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"study {path}: not valid TOML ({error})") from None
    for key in raw:
        if key not in ("study", "variants", "description"):
            raise ConfigError(f"study {path}: unknown key '{key}' (allowed: study, variants, description)")
    study = raw.get("study")
    if not isinstance(study, dict):
        raise ConfigError(f"study {path}: missing [study] table")
    for key in study:
        if key not in STUDY_KEYS:
            raise ConfigError(f"study {path}: unknown key 'study.{key}' (allowed: {', '.join(sorted(STUDY_KEYS))})")
    variants = raw.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"study {path}: needs at least one [variants.NAME] table")
    base = study.get("base", cfg.DEFAULT_RECIPE)
    batch_sizes = _int_list(path, "batch_sizes", study.get("batch_sizes"), 1)
    seeds = _int_list(path, "seeds", study.get("seeds", [0]))
    epochs = study.get("epochs")
    if epochs is not None:
        _int_list(path, "epochs", [epochs], 1)
    augmentations = study.get("augmentations", [None])
    if augmentations != [None] and (not isinstance(augmentations, list) or not augmentations or not all(
            a in cfg.AUGMENTATIONS for a in augmentations)):
        raise ConfigError(f"study {path}: study.augmentations must be a list of {', '.join(cfg.AUGMENTATIONS)}")
    lr_factors = study.get("lr_factors", [1.0])
    if not isinstance(lr_factors, list) or not lr_factors or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in lr_factors):
        raise ConfigError(f"study {path}: study.lr_factors must be a list of positive numbers")
    out_dir = Path(out or study.get("out") or f"runs/{path.stem}")

    base_recipe = cfg.load_recipe(base)
    runs = []
    for variant, overrides in variants.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"study {path}: variants.{variant} must be a table of recipe sections")
        recipe = {section: dict(values) for section, values in base_recipe.items()}
        for section, values in overrides.items():
            if section not in cfg.SECTIONS or not isinstance(values, dict):
                raise ConfigError(f"study {path}: variants.{variant}.{section}: expected one of the recipe "
                                  f"sections {', '.join(cfg.SECTIONS)} as a table")
            recipe.setdefault(section, {}).update(values)
        for batch, augmentation, seed, factor in itertools.product(batch_sizes, augmentations, seeds, lr_factors):
            aug_name = augmentation or recipe.get("data", {}).get("augmentation", "none")
            name = f"{variant}-b{batch}-{aug_name}-s{seed}" + (f"-lr{factor:g}" if len(lr_factors) > 1 else "")
            overrides_run = {"run.batch_size": batch, "run.seed": seed, "run.out": str(out_dir / name),
                             "data.augmentation": aug_name}
            if epochs is not None:
                overrides_run["run.epochs"] = epochs
            try:
                config = cfg.build_config(recipe, overrides_run)
            except ConfigError as error:
                raise ConfigError(f"study {path}, run {name}: {error}") from None
            config.optimizer.lr *= factor
            config.recipe = f"{path.stem}/{name}"
            runs.append(StudyRun(name, variant, batch, aug_name, seed, float(factor), config))
    description = raw.get("description", study.get("description", ""))
    return Study(path, out_dir, description, runs)


def run_study(study: Study, only: str = "", dry_run: bool = False, exclude: str = "") -> list[Path]:
    """Run every incomplete run of the study in order; returns the run directories."""
    from largebatch.train import DivergenceError, train

    study.out.mkdir(parents=True, exist_ok=True)
    (study.out / "study.toml").write_text(study.path.read_text(encoding="utf-8"), encoding="utf-8")
    done = []
    for index, run in enumerate(study.runs, 1):
        out = Path(run.config.run.out)
        if (only and only not in run.name) or (exclude and exclude in run.name):
            continue
        if (out / "summary.json").is_file():
            print(f"[{index}/{len(study.runs)}] {run.name}: complete, skipped", flush=True)
            done.append(out)
            continue
        print(f"[{index}/{len(study.runs)}] {run.name}: {'would run' if dry_run else 'running'}", flush=True)
        if not dry_run:
            try:
                result = train(run.config, resume="auto")
            except DivergenceError as error:  # a result of the study, not a failure of it
                print(f"{run.name}: diverged: {error}", flush=True)
                write_divergence_summary(run, out, error)
                done.append(out)
                continue
            if "stopped_at_step" in result:  # a signal stopped it: stop the study too
                print("study stopped; run the same command again to resume", flush=True)
                break
        done.append(out)
    return done


def write_divergence_summary(run: StudyRun, out: Path, error) -> None:
    """summary.json for a run whose loss became non-finite: the study records it and goes on."""
    from largebatch.checkpoint import write_atomic
    from largebatch.progress import epoch_records, read_metrics

    records = epoch_records(read_metrics(out / "metrics.jsonl")) if (out / "metrics.jsonl").is_file() else []
    evaluated = [r for r in records if r.get("top1") is not None]
    summary = {"diverged": True, "diverged_at_step": error.step, "diverged_at_epoch": error.epoch,
               "diverged_lr": error.lr, "message": str(error),
               "top1": None, "top5": None, "best_top1": max((r["top1"] for r in evaluated), default=None),
               "train_time_s": records[-1]["train_time_s"] if records else 0.0,
               "wall_time_s": records[-1]["elapsed_s"] if records else 0.0,
               "images_per_s": records[-1]["images_per_s"] if records else 0.0,
               "epochs": run.config.run.epochs, "steps": error.step, "global_batch_size": run.batch_size,
               "optimizer": run.config.optimizer.name}
    write_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())


def write_results(study_dir: Path) -> list[dict[str, Any]]:
    """Collect the complete runs of a study directory into results.json (sorted)."""
    from largebatch.report import collect_runs
    rows = collect_runs(study_dir)
    (study_dir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows
