"""Run folder names of a study: ``<variant>-b<batch>-<augmentation>-s<seed>[-lr<factor>]``.

The name is the run's grid point, written so that it reads back exactly. A study makes variant
names of ASCII letters, digits and underscores only, so ``-`` separates the parts; the
augmentation is one of the known levels; the LR factor is written with ``:g`` (six significant
digits), so two factors that print alike are the same grid point (the study file loader refuses
them as duplicates). Names are parsed from the right: the part before the last
``-b<batch>-<augmentation>-s<seed>[-lr<factor>]`` is the variant, whatever it holds, so a run
folder written before variant names were restricted (``lars-bias_excluded-b4096-none-s0``) still
reads back as its own variant and is never taken for another (``lars``). A folder whose name does
not parse is not a study run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from largebatch.config import AUGMENTATIONS
from largebatch.errors import ConfigError

VARIANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,63}", re.ASCII)
VARIANT_RULE = ("1 to 64 ASCII letters, digits and underscores, starting with a letter or digit "
                "('-' separates the parts of a run folder name)")
# What a variant read back from a folder may hold: also '-' and '.' (names made before the rule
# above), never a path separator or a leading dot.
READABLE_VARIANT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
RUN_NAME = re.compile(r"(?P<variant>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})-b(?P<batch>[1-9][0-9]{0,15})"
                      r"-(?P<augmentation>[a-z]+)-s(?P<seed>0|[1-9][0-9]{0,15})(?:-lr(?P<factor>[0-9.e+-]{1,16}))?",
                      re.ASCII)


def check_variant_name(name: object, where: str) -> str:
    """``name`` if it is a valid variant name, else a ConfigError naming ``where``."""
    if not isinstance(name, str) or not VARIANT_PATTERN.fullmatch(name):
        raise ConfigError(f"{where}: variant name {str(name)[:80]!r} is not allowed: use {VARIANT_RULE}")
    return name


def format_factor(factor: float) -> str:
    """The LR factor as it appears in a run name (``:g``: 0.25, 4, 1e-05)."""
    return f"{factor:g}"


@dataclass(frozen=True)
class GridPoint:
    """Where a run sits in its study's grid. ``with_factor``: the name carries ``-lr<factor>``
    (every run of a study that sweeps the LR, or whose only factor is not 1)."""

    variant: str
    batch_size: int
    augmentation: str
    seed: int
    lr_factor: float = 1.0
    with_factor: bool = False

    @property
    def name(self) -> str:
        base = f"{self.variant}-b{self.batch_size}-{self.augmentation}-s{self.seed}"
        return base + (f"-lr{format_factor(self.lr_factor)}" if self.with_factor else "")

    @property
    def cell(self) -> tuple[str, str, int]:
        """(variant, augmentation, batch): the runs that differ only in LR factor and seed."""
        return (self.variant, self.augmentation, self.batch_size)


def parse_run_name(name: str) -> GridPoint | None:
    """The grid point a run folder name states, or None if the name is not a study run's.
    Exact: ``parse_run_name(point.name) == point`` for every point a study can make."""
    match = RUN_NAME.fullmatch(name)
    if match is None or match["augmentation"] not in AUGMENTATIONS:
        return None
    factor_text = match["factor"]
    factor = 1.0
    if factor_text is not None:
        try:
            factor = float(factor_text)
        except ValueError:
            return None
        if not (math.isfinite(factor) and factor > 0) or format_factor(factor) != factor_text:
            return None
    return GridPoint(match["variant"], int(match["batch"]), match["augmentation"], int(match["seed"]), factor,
                     factor_text is not None)
