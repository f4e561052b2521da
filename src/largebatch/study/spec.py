"""Study files: a grid of training runs from one recipe, every run's config validated up front.

A study file (TOML) names a base recipe, the axes, and one table of recipe overrides per
variant (an optimizer with its settings)::

    description = "..."

    [study]
    base = "fashion_mnist"            # the training recipe every run starts from
    batch_sizes = [128, 1024, 4096]   # global batch sizes
    epochs = 20                       # the same epoch budget for every run (default: the recipe's)
    seeds = [0]
    augmentations = ["none"]          # data.augmentation levels (default: the variant's own)
    lr_factors = [0.5, 1.0, 2.0]      # an LR sweep: each factor multiplies the variant's optimizer.lr
    widen_limit = 3                   # factors a sweep may add beyond each end (0: never widen)
    best_seeds = [1, 2]               # after the sweep: these seeds at each cell's best factor
    out = "runs/study"

    [variants.lars]                   # recipe sections, as in a recipe file
    optimizer = { name = "lars", lr = 10.0 }
    schedule = { scaling = "sqrt", base_batch_size = 4096 }

Every value passes the validation of the recipe field it sets (``largebatch.config``): a batch
size is checked as ``run.batch_size``, a seed as ``run.seed``, each variant's table by
``build_config``. An LR factor is applied before that validation, so factor x lr must itself be
a valid ``optimizer.lr`` (positive and finite), and so must the peak LR the scaling rule makes of
it (``largebatch.derive`` checks that). Variant names are restricted (``largebatch.study.names``) and two grid points with the same
run folder name are an error naming both.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from largebatch import config as cfg
from largebatch.errors import ConfigError
from largebatch.study.names import GridPoint, check_variant_name, format_factor
from largebatch.study.runs import peak_lr

STUDY_DIR = cfg.RECIPE_DIR / "studies"
STUDY_KEYS = ("base", "batch_sizes", "epochs", "seeds", "augmentations", "lr_factors", "widen_limit", "best_seeds",
              "min_top1", "out", "description")
MAX_RUNS = 10_000          # a grid larger than this is a typo (or a month of GPU time): refused
MAX_WIDEN_LIMIT = 10       # 2^10 = 1024x beyond the grid's ends
DEFAULT_WIDEN_LIMIT = 3
# Keys a study's grid sets: `--set` may not change them, since the run folder name states them.
GRID_KEYS = ("run.batch_size", "run.seed", "run.out", "run.epochs", "data.augmentation", "optimizer.lr")


@dataclass
class _StudyFields:
    """The study keys that are no recipe field, declared as recipe fields are, so that
    ``largebatch.config.check_value`` validates them like any recipe value."""

    lr_factor: float = cfg.option(1.0, "multiplies the variant's optimizer.lr", min=0.0, min_exclusive=True)
    widen_limit: int = cfg.option(DEFAULT_WIDEN_LIMIT, "factors a sweep may add beyond each end", min=0,
                                  max=MAX_WIDEN_LIMIT)
    min_top1: float = cfg.option(0.0, "a run ending below this test top-1 failed, as a diverged one (0: off)",
                                 min=0.0, max=1.0)


# The fields whose validation the study's keys use: every recipe field, and the two above.
_FIELDS = {f"{s}.{f.name}": f for s in cfg.SECTIONS for f in cfg.section_fields(s)}
_FACTOR_FIELD, _WIDEN_FIELD, _MIN_TOP1_FIELD = dataclasses.fields(_StudyFields)


@dataclass
class StudyRun:
    """One training run of a study: its grid point, run folder name and validated config."""

    point: GridPoint
    config: cfg.Config = field(repr=False)

    @property
    def name(self) -> str:
        return self.point.name

    @property
    def variant(self) -> str:
        return self.point.variant

    @property
    def batch_size(self) -> int:
        return self.point.batch_size

    @property
    def augmentation(self) -> str:
        return self.point.augmentation

    @property
    def seed(self) -> int:
        return self.point.seed

    @property
    def lr_factor(self) -> float:
        return self.point.lr_factor


@dataclass
class Study:
    """A loaded study file: its grid of runs and what is needed to make more of them (the
    widened factors and the extra seeds are decided from results, after the grid has run)."""

    path: Path
    out: Path
    description: str
    runs: list[StudyRun]
    lr_factors: list[float]
    seeds: list[int]
    best_seeds: list[int]
    widen_limit: int
    recipes: dict[str, dict[str, dict[str, Any]]] = field(repr=False)
    epochs: int | None = None
    min_top1: float = 0.0  # a run ending below this top-1 failed (sweep.failed_below)

    @property
    def sweeps(self) -> bool:
        """Whether the study sweeps the LR (more than one factor): then its names carry ``-lr``."""
        return len(self.lr_factors) > 1

    def make_run(self, variant: str, batch_size: int, augmentation: str, seed: int, lr_factor: float,
                 settings: dict[str, Any] | None = None) -> StudyRun:
        """The run at this grid point, its config validated (``settings``: extra ``section.key``
        values, as ``largebatch study --set`` gives)."""
        where = f"study {self.path}: run {variant}-b{batch_size}: LR factor"
        lr_factor = cfg.check_value(where, _FACTOR_FIELD, lr_factor)
        _check_factor_precision(where, lr_factor)
        with_factor = self.sweeps or lr_factor != 1.0
        point = GridPoint(variant, batch_size, augmentation, seed, float(lr_factor), with_factor)
        return StudyRun(point, _run_config(self, point, settings or {}))


def _check_factor_precision(where: str, factor: float) -> None:
    """A factor must read back exactly from its run name, which keeps six significant digits."""
    if float(format_factor(factor)) != factor:
        raise ConfigError(f"{where}: {factor!r} has more significant digits than a run name keeps (6); "
                          f"use {format_factor(factor)}")


def find_study(path_or_name: str) -> Path:
    """A study file by path, or a built-in study by name."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    builtin = STUDY_DIR / f"{path_or_name}.toml"
    if "/" not in path_or_name and not path_or_name.endswith(".toml") and builtin.is_file():
        return builtin
    names = ", ".join(sorted(p.stem for p in STUDY_DIR.glob("*.toml")))
    raise ConfigError(f"study file {path_or_name} not found (built-in studies: {names})")


def _list(path: Path, key: str, value: Any, check: dataclasses.Field, default: Any = None) -> list:
    """A non-empty list whose every element passes ``check`` (a recipe field's validation), no repeats."""
    if value is None:
        value = default
    if not isinstance(value, list) or not value:
        raise ConfigError(f"study {path}: study.{key} must be a non-empty list")
    return [cfg.check_value(f"study {path}: study.{key}[{index}]", check, v) for index, v in enumerate(value)]


def _no_repeats(path: Path, key: str, values: list, shown=str) -> None:
    seen: dict[str, Any] = {}
    for value in values:
        text = shown(value)
        if text in seen:
            raise ConfigError(f"study {path}: study.{key} holds {seen[text]!r} and {value!r}, the same grid point "
                              f"(run names would both say {text}); remove one")
        seen[text] = value


def load_study(path_or_name: str, out: str = "") -> Study:
    """Read and validate a study file into its grid of runs (every config validated up front)."""
    path = find_study(path_or_name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"study {path}: not valid TOML ({str(error).splitlines()[0]})") from None
    for key in raw:
        if key not in ("study", "variants", "description"):
            raise ConfigError(f"study {path}: unknown key {str(key)[:80]!r} (allowed: study, variants, description)")
    study = raw.get("study")
    if not isinstance(study, dict):
        raise ConfigError(f"study {path}: missing [study] table")
    for key in study:
        if key not in STUDY_KEYS:
            raise ConfigError(f"study {path}: unknown key {('study.' + key)[:80]!r} "
                              f"(allowed: {', '.join(sorted(STUDY_KEYS))})")
    variants = raw.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"study {path}: needs at least one [variants.NAME] table")

    base = study.get("base", cfg.DEFAULT_RECIPE)
    if not isinstance(base, str):
        raise ConfigError(f"study {path}: study.base must be a recipe name or path")
    batch_sizes = _list(path, "batch_sizes", study.get("batch_sizes"), _FIELDS["run.batch_size"])
    seeds = _list(path, "seeds", study.get("seeds"), _FIELDS["run.seed"], default=[0])
    best_seeds = study.get("best_seeds", [])
    if best_seeds != []:
        best_seeds = _list(path, "best_seeds", best_seeds, _FIELDS["run.seed"])
    epochs = study.get("epochs")
    if epochs is not None:
        epochs = cfg.check_value(f"study {path}: study.epochs", _FIELDS["run.epochs"], epochs)
    augmentations = study.get("augmentations")
    if augmentations is not None:
        augmentations = _list(path, "augmentations", augmentations, _FIELDS["data.augmentation"])
    lr_factors = _list(path, "lr_factors", study.get("lr_factors"), _FACTOR_FIELD, default=[1.0])
    widen_limit = cfg.check_value(f"study {path}: study.widen_limit", _WIDEN_FIELD,
                                  study.get("widen_limit", DEFAULT_WIDEN_LIMIT))
    min_top1 = cfg.check_value(f"study {path}: study.min_top1", _MIN_TOP1_FIELD, study.get("min_top1", 0.0))
    _no_repeats(path, "batch_sizes", batch_sizes)
    _no_repeats(path, "seeds", seeds)
    _no_repeats(path, "best_seeds", best_seeds)
    for seed in best_seeds:
        if seed in seeds:
            raise ConfigError(f"study {path}: seed {seed} is in both study.seeds and study.best_seeds (the sweep "
                              "already runs it at every factor); remove it from best_seeds")
    _no_repeats(path, "augmentations", augmentations or [])
    _no_repeats(path, "lr_factors", lr_factors, format_factor)
    for index, factor in enumerate(lr_factors):
        _check_factor_precision(f"study {path}: study.lr_factors[{index}]", factor)
    description = raw.get("description", study.get("description", ""))
    if not isinstance(description, str):
        raise ConfigError(f"study {path}: description must be a string")
    out_text = out or study.get("out") or f"runs/{path.stem}"
    out_text = cfg.check_value(f"study {path}: study.out", _FIELDS["run.out"], out_text)

    base_recipe = cfg.load_recipe(base)
    recipes: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, overrides in variants.items():
        check_variant_name(variant, f"study {path}: [variants.{str(variant)[:80]}]")
        if not isinstance(overrides, dict):
            raise ConfigError(f"study {path}: variants.{variant} must be a table of recipe sections")
        recipe = {section: dict(values) for section, values in base_recipe.items()}
        for section, values in overrides.items():
            if section not in cfg.SECTIONS or not isinstance(values, dict):
                raise ConfigError(f"study {path}: variants.{variant}.{str(section)[:80]}: expected one of the recipe "
                                  f"sections {', '.join(cfg.SECTIONS)} as a table")
            recipe.setdefault(section, {}).update(values)
        recipes[variant] = recipe

    grid_size = len(recipes) * len(batch_sizes) * len(augmentations or [None]) * len(seeds) * len(lr_factors)
    if grid_size > MAX_RUNS:
        raise ConfigError(f"study {path}: the grid has {grid_size:,} runs, more than {MAX_RUNS:,}; split the study")
    result = Study(path, Path(out_text), description, [], lr_factors, seeds, best_seeds, widen_limit, recipes,
                   epochs, min_top1)
    for variant, recipe in recipes.items():
        own_augmentation = _variant_augmentation(path, variant, recipe)
        for batch, augmentation, seed, factor in itertools.product(
                batch_sizes, augmentations or [own_augmentation], seeds, lr_factors):
            result.runs.append(result.make_run(variant, batch, augmentation, seed, factor))
    return result


def _variant_augmentation(path: Path, variant: str, recipe: dict[str, dict[str, Any]]) -> str:
    value = recipe.get("data", {}).get("augmentation", "none")
    return cfg.check_value(f"study {path}: variants.{variant}.data.augmentation", _FIELDS["data.augmentation"], value)


def _run_config(study: Study, point: GridPoint, settings: dict[str, Any]) -> cfg.Config:
    """The validated config of one grid point: the variant's recipe, the grid's values, the LR
    factor applied to optimizer.lr before validation, then ``settings``."""
    where = f"study {study.path}, run {point.name}"
    recipe = study.recipes[point.variant]
    overrides: dict[str, Any] = {"run.batch_size": point.batch_size, "run.seed": point.seed,
                                 "run.out": str(study.out / point.name), "data.augmentation": point.augmentation}
    if study.epochs is not None:
        overrides["run.epochs"] = study.epochs
    try:
        unscaled = cfg.build_config(recipe, {**overrides, **settings})
        if point.lr_factor != 1.0:
            overrides["optimizer.lr"] = unscaled.optimizer.lr * point.lr_factor
            config = cfg.build_config(recipe, {**overrides, **settings})
        else:
            config = unscaled
        peak_lr(config)  # derive() refuses a peak LR that is not positive and finite
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    config.recipe = f"{study.path.stem}/{point.name}"
    return config


def parse_setting(text: str) -> tuple[str, Any]:
    """``section.key=value`` (the value in TOML syntax; a bare word is a string) for ``--set``."""
    if "=" not in text:
        raise ConfigError(f"--set {text[:80]!r}: expected section.key=value, e.g. run.noise_scale=true")
    key, value_text = (part.strip() for part in text.split("=", 1))
    if key not in _FIELDS:
        raise ConfigError(f"--set {key[:80]!r}: unknown key (give section.key, e.g. run.noise_scale; sections: "
                          f"{', '.join(cfg.SECTIONS)})")
    if key in GRID_KEYS:
        raise ConfigError(f"--set {key}: the study's grid sets this key (the run folder name states it); "
                          "change the study file instead")
    try:
        value = tomllib.loads(f"value = {value_text}")["value"]
    except tomllib.TOMLDecodeError:
        value = value_text  # a bare word: a string (a choice such as bf16)
    return key, cfg.check_value(f"--set {key}", _FIELDS[key], value)
