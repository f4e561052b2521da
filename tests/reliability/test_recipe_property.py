"""Property: any TOML document, with any values under any sections and keys (the real ones most
often), loads as a valid Config or fails with a ConfigError; never another exception. A Config
that loads holds only values its own validation accepts, and survives the round trip through
the config.toml written beside every run."""

from __future__ import annotations

import datetime
import json
import math
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from largebatch import config as cfg
from largebatch.errors import ConfigError

KNOWN_KEYS = sorted({f.name for s in cfg.SECTIONS for f in cfg.section_fields(s)})
CHOICES = sorted({c for s in cfg.SECTIONS for f in cfg.section_fields(s) for c in (f.metadata["choices"] or ())})

characters = st.characters(blacklist_categories=("Cs",))  # TOML strings hold no surrogates
text = st.text(alphabet=characters, max_size=20)
names = st.sampled_from(KNOWN_KEYS) | st.text(alphabet=characters, min_size=1, max_size=12)
scalars = (
    st.booleans()
    | st.integers()  # unbounded: TOML readers accept hundreds of digits
    | st.integers(min_value=-2, max_value=5000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=0.0, max_value=2.0)
    | text
    | st.sampled_from(CHOICES + cfg.recipe_names() + ["fast_resnet", "resnet20"])
    | st.datetimes()
    | st.dates()
    | st.times()
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(names, inner, max_size=3), max_leaves=8)
sections = st.dictionaries(st.sampled_from(cfg.SECTIONS) | names, st.dictionaries(names, values, max_size=6),
                           max_size=6)
top_level = st.dictionaries(st.sampled_from(["description", "recipe", "extends"]) | names, scalars, max_size=2)


def toml_string(value: str) -> str:
    # JSON's escapes are TOML's, except that TOML also wants DEL escaped
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(top: dict, tables: dict) -> str:
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in top.items() if k not in tables]
    for name, table in tables.items():
        lines.append(f"[{toml_string(name)}]")
        lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(top=top_level, tables=sections)
def test_any_toml_recipe_gives_a_valid_config_or_a_config_error(tmp_path, top, tables):
    text = toml_document(top, tables)
    tomllib.loads(text)  # the generator writes valid TOML: a failure here is the test's own bug
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text, encoding="utf-8")
    try:
        config = cfg.load_config(str(recipe))
    except ConfigError as error:
        message = str(error)
        assert message and "\n" not in message
        return
    # Accepted: every value passes its own field's check unchanged ...
    for section in cfg.SECTIONS:
        for f in cfg.section_fields(section):
            value = getattr(getattr(config, section), f.name)
            assert cfg.check_value(f"{section}.{f.name}", f, value) == value
    # ... and the config.toml written beside a run reads back as the same config.
    saved = tmp_path / "config.toml"
    saved.write_text(cfg.to_toml(config), encoding="utf-8")
    assert cfg.load_config(str(saved)) == config


STRING_FIELDS = [(s, f) for s in cfg.SECTIONS for f in cfg.section_fields(s) if f.type == "str"]


@settings(max_examples=100, deadline=None)
@given(field=st.sampled_from(STRING_FIELDS),
       value=st.text(alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FF), max_size=12))
def test_any_accepted_string_survives_config_toml(field, value):
    """Strings are where a writer most easily goes wrong (quotes, backslashes, control characters):
    any string a field accepts is written to config.toml so that it reads back unchanged."""
    section, f = field
    try:
        config = cfg.load_config("fashion_mnist", {f"{section}.{f.name}": value})
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    assert cfg.build_config(_parse(cfg.to_toml(config))) == config


def _parse(text: str) -> dict:
    raw = tomllib.loads(text)
    meta = {"recipe": raw.pop("recipe"), "description": raw.pop("description")}
    return {**raw, "": meta}
