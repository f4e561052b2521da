"""Run folder names: a study's grid point written and read back exactly."""

import pytest

from largebatch.errors import ConfigError
from largebatch.study.names import GridPoint, check_variant_name, parse_run_name


@pytest.mark.parametrize("point", [
    GridPoint("lars", 4096, "none", 0),
    GridPoint("sgd_nesterov", 16384, "minimal", 2, 0.25, True),
    GridPoint("lamb", 128, "strong", 4294967295, 1e-05, True),
    GridPoint("x", 1, "extended", 0, 0.0078125, True),
    GridPoint("lars_40ep", 16384, "none", 0, 1.0, True),
])
def test_names_read_back_exactly(point):
    assert parse_run_name(point.name) == point


def test_a_hyphenated_variant_is_read_as_itself_not_as_its_prefix():
    point = parse_run_name("lars-bias_excluded-b4096-none-s0")
    assert point.variant == "lars-bias_excluded" and point.batch_size == 4096
    assert parse_run_name("lars-b4096-none-s0").variant == "lars"


@pytest.mark.parametrize("name", [
    "fashion_mnist-b4096-lars-s0",       # a plain run's default name: 'lars' is no augmentation level
    "lars-b4096-none-s0-lr0.50",         # not the :g form of the factor
    "lars-b4096-none-s01", "lars-b04096-none-s0", "lars-b0-none-s0",
    "lars-b4096-none-s0-lrinf", "lars-b4096-none-s0-lr0", "lars-b4096-none-s0-lr-1",
    "..-b4096-none-s0", ".hidden-b4096-none-s0", "a/b-b4096-none-s0", "lars-b4096-none", "",
])
def test_other_names_are_not_study_runs(name):
    assert parse_run_name(name) is None


@pytest.mark.parametrize("name", ["../../../ESCAPED", "/abs", "lars-bias", "a.b", "", "_x", "é", "a" * 65, 7])
def test_variant_names_outside_the_safe_set_are_refused(name):
    with pytest.raises(ConfigError, match="variant name"):
        check_variant_name(name, "here")


def test_safe_variant_names_pass():
    for name in ("lars", "sgd_nesterov", "LARS2", "a" * 64):
        assert check_variant_name(name, "here") == name
