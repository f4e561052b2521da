"""Property: any TOML study file, with any values under any keys (the real ones most often), loads
as a valid study or fails with a one-line ConfigError; never another exception. A study that
loads has only safe, distinct run names that read back as their grid points, every run directory
inside the study's folder, and every run config passes its own validation with a positive, finite
learning rate before and after the scaling rule."""

from __future__ import annotations

import json
import math
import os
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from largebatch import config as cfg
from largebatch.errors import ConfigError
from largebatch.study import load_study
from largebatch.study.names import VARIANT_PATTERN, parse_run_name
from largebatch.study.runs import peak_lr
from largebatch.study.spec import STUDY_KEYS



def toml_string(value: str) -> str:
    # JSON's escapes are TOML's, except that TOML also wants DEL escaped
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))

characters = st.characters(blacklist_categories=("Cs",))
text = st.text(alphabet=characters, max_size=12)
small_ints = st.integers(min_value=-2, max_value=70000)
numbers = (st.floats(allow_nan=True, allow_infinity=True) | st.floats(min_value=1e-3, max_value=8.0)
           | st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0, 1.0000001, 1e308, 1e-320]))
scalars = st.booleans() | st.integers() | small_ints | numbers | text | st.sampled_from(
    list(cfg.AUGMENTATIONS) + cfg.recipe_names() + ["runs/x", "../up", "/abs", ""])
lists = st.lists(scalars, max_size=3) | st.lists(small_ints, min_size=1, max_size=3) | st.lists(
    numbers, min_size=1, max_size=3) | st.lists(st.sampled_from(cfg.AUGMENTATIONS), min_size=1, max_size=2)
# Mostly well-formed studies with a few odd values (so that many load and their runs are checked) ...
plausible_study = st.fixed_dictionaries(
    {"batch_sizes": st.lists(st.integers(min_value=-1, max_value=70000), min_size=1, max_size=3)},
    optional={"seeds": st.lists(st.integers(min_value=-1, max_value=4), min_size=1, max_size=2),
              "best_seeds": st.lists(st.integers(min_value=0, max_value=4), max_size=2),
              "lr_factors": st.lists(numbers, min_size=1, max_size=3),
              "widen_limit": st.integers(min_value=-1, max_value=12),
              "augmentations": st.lists(st.sampled_from(cfg.AUGMENTATIONS + ("wild",)), min_size=1, max_size=2),
              "epochs": st.integers(min_value=0, max_value=30),
              "out": st.sampled_from(["runs/x", "../up", "/tmp/abs", ""]) | text,
              "base": st.sampled_from(cfg.recipe_names()) | text,
              "description": text})
# ... and anything at all under any key.
study_tables = plausible_study | st.dictionaries(st.sampled_from(STUDY_KEYS) | text, scalars | lists, max_size=8)

FIELDS = {s: [f.name for f in cfg.section_fields(s)] for s in cfg.SECTIONS}
plausible_variant = st.fixed_dictionaries({}, optional={
    "optimizer": st.fixed_dictionaries({"name": st.sampled_from(cfg.OPTIMIZERS + ("adamx",))},
                                       optional={"lr": numbers, "momentum": numbers}),
    "schedule": st.fixed_dictionaries({}, optional={"scaling": st.sampled_from(cfg.SCALING_RULES),
                                                    "base_batch_size": small_ints, "warmup_epochs": numbers}),
    "run": st.fixed_dictionaries({}, optional={"batch_size": small_ints, "seed": small_ints, "out": text}),
    "data": st.fixed_dictionaries({}, optional={"augmentation": st.sampled_from(cfg.AUGMENTATIONS + ("wild",))})})
any_variant = st.dictionaries(
    st.sampled_from(cfg.SECTIONS) | text,
    st.dictionaries(st.sampled_from(sorted({k for keys in FIELDS.values() for k in keys})) | text,
                    scalars | st.lists(numbers, max_size=2), max_size=4) | scalars,
    max_size=3)
variant_names = st.sampled_from(["lars", "sgd_nesterov", "lamb", "L2", "../../../ESCAPED", "/tmp/abs", "lars-bias",
                                 "a.b", "", "_x", "é"]) | text
variants = (st.dictionaries(st.sampled_from(["lars", "sgd_nesterov", "lamb", "L2"]), plausible_variant, min_size=1,
                            max_size=2)
            | st.dictionaries(variant_names, plausible_variant | any_variant, max_size=2))
top_level = st.just({}) | st.dictionaries(st.sampled_from(["description"]) | text, scalars, max_size=1)


def document(top: dict, study: dict, variant_tables: dict) -> str:
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in top.items() if k not in ("study", "variants")]
    lines.append("[study]")
    lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in study.items()]
    for name, table in variant_tables.items():
        lines.append(f"[variants.{toml_string(name)}]")
        lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(top=top_level, study=study_tables, variant_tables=variants)
def test_any_study_file_gives_a_valid_grid_or_a_config_error(tmp_path, top, study, variant_tables):
    text_ = document(top, study, variant_tables)
    tomllib.loads(text_)  # the generator writes valid TOML: a failure here is the test's own bug
    path = tmp_path / "study.toml"
    path.write_text(text_, encoding="utf-8")
    try:
        loaded = load_study(str(path))
    except ConfigError as error:
        message = str(error)
        assert message and "\n" not in message
        return
    out = os.path.realpath(loaded.out)
    names = [run.name for run in loaded.runs]
    assert len(set(names)) == len(names)
    for run in loaded.runs:
        assert VARIANT_PATTERN.fullmatch(run.variant)
        assert parse_run_name(run.name) == run.point
        assert os.path.dirname(os.path.realpath(run.config.run.out)) == out
        for section in cfg.SECTIONS:
            for f in cfg.section_fields(section):
                value = getattr(getattr(run.config, section), f.name)
                assert cfg.check_value(f"{section}.{f.name}", f, value) == value
        lr = run.config.optimizer.lr
        assert math.isfinite(lr) and lr > 0
        assert math.isfinite(peak_lr(run.config)) and peak_lr(run.config) > 0
