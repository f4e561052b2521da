"""The rate curve: the saturating fit, table interpolation, and the shape the planner uses."""

import random

import pytest

from largebatch.errors import ConfigError
from largebatch.plan.curve import (check_table, fit_saturating, relative_rate, saturating, table_rate)


def test_fit_recovers_the_saturating_form_from_synthetic_points():
    for max_rate, half_batch in ((1300.0, 12.0), (95.0, 0.5), (5000.0, 60.0)):
        batches = [4, 8, 16, 32, 64, 128, 256]
        rates = [saturating(b, max_rate, half_batch) for b in batches]
        assert fit_saturating(batches, rates) == pytest.approx((max_rate, half_batch), rel=1e-9)
    # Three points, as `largebatch benchmark` measures at least, are enough.
    assert fit_saturating([64, 128, 256], [saturating(b, 800, 30) for b in (64, 128, 256)]) == \
        pytest.approx((800, 30), rel=1e-9)


def test_fit_with_noise_stays_close():
    generator = random.Random(0)
    batches = [8, 16, 32, 64, 128, 256]
    rates = [saturating(b, 1000, 20) * (1 + generator.uniform(-0.02, 0.02)) for b in batches]
    max_rate, half_batch = fit_saturating(batches, rates)
    assert max_rate == pytest.approx(1000, rel=0.05)
    assert half_batch == pytest.approx(20, abs=3)


def test_fit_rejects_what_it_cannot_fit():
    with pytest.raises(ConfigError, match="two different batch sizes"):
        fit_saturating([64, 64], [100, 100])
    with pytest.raises(ConfigError, match="did not grow"):
        fit_saturating([8, 16], [100, 300])  # the step got shorter with twice the images
    with pytest.raises(ConfigError, match="> 0"):
        fit_saturating([8, 16], [100, -1])
    # A constant rate: intercept 0, b_half 0.
    assert fit_saturating([8, 16, 32], [500, 500, 500]) == pytest.approx((500, 0), abs=1e-9)


def test_table_is_exact_at_its_points_and_linear_in_time_between():
    batches, rates = (8, 16, 32), (400.0, 640.0, 800.0)
    for b, r in zip(batches, rates):
        assert table_rate(b, batches, rates) == r
    # Between 16 (25 ms) and 32 (40 ms): at 24 the step takes 32.5 ms.
    assert table_rate(24, batches, rates) == pytest.approx(24 / 0.0325)


def test_table_outside_its_range_follows_the_fitted_form_and_is_continuous():
    batches = (16, 32, 64, 128)
    rates = tuple(saturating(b, 1000, 24) for b in batches)
    for b in (1, 4, 8, 256, 1024):
        assert table_rate(b, batches, rates) == pytest.approx(saturating(b, 1000, 24), rel=1e-9)
    for end in (16, 128):
        assert table_rate(end * (1 - 1e-9), batches, rates) == pytest.approx(table_rate(end, batches, rates))
        assert table_rate(end * (1 + 1e-9), batches, rates) == pytest.approx(table_rate(end, batches, rates))
    # Times that do not grow with the batch cannot be fitted: the end point's rate is held.
    assert table_rate(64, (8, 16), (100, 300)) == 300


def test_relative_rate_is_one_at_the_reference_and_constant_without_a_curve():
    batches, rates = (8, 16, 32), (400.0, 640.0, 800.0)
    assert relative_rate(32, 32, batches, rates) == 1.0
    assert relative_rate(8, 32, batches, rates) == pytest.approx(0.5)
    assert relative_rate(8, 256, half_batch=8) == pytest.approx((8 / 16) / (256 / 264))
    assert relative_rate(8, 256) == 1.0


def test_check_table():
    check_table((1, 2), (1.0, 2.0))
    for batches, rates, message in (((1,), (1.0,), "at least two"), ((2, 1), (1.0, 1.0), "increasing"),
                                    ((1, 2), (1.0,), "2 batches but 1 rates"), ((1, 2), (0.0, 1.0), "> 0")):
        with pytest.raises(ConfigError, match=message):
            check_table(batches, rates)
