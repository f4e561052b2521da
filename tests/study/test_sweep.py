"""A cell's LR sweep on synthetic results: ranking, widening, the good-LR range."""

import math

import pytest

from largebatch.study.sweep import Result, analyse, best_point, curve, curve_seeds, failed_below, next_factor

GRID = [0.25, 0.5, 1.0, 2.0, 4.0]


def results(top1_by_factor: dict[float, float | None], seed: int = 0) -> list[Result]:
    """One run per factor; None means diverged."""
    return [Result(f, seed, t, t is None) for f, t in top1_by_factor.items()]


def widen(top1_by_factor, limit=3):
    return next_factor(curve(results(top1_by_factor)), min(GRID), max(GRID), limit)


def test_best_is_the_highest_top1_and_diverged_runs_rank_last():
    points = curve(results({0.25: 0.80, 0.5: 0.85, 1.0: 0.90, 2.0: 0.88, 4.0: None}))
    assert best_point(points).lr_factor == 1.0
    assert [p.diverged for p in points] == [False, False, False, False, True]
    assert best_point(curve(results({1.0: None, 2.0: None}))) is None


def test_ties_go_to_the_factor_nearest_one_then_the_smaller():
    assert best_point(curve(results({0.25: 0.9, 0.5: 0.9, 4.0: 0.9}))).lr_factor == 0.5
    assert best_point(curve(results({0.5: 0.9, 2.0: 0.9}))).lr_factor == 0.5


def test_an_interior_best_needs_no_widening():
    assert widen({0.25: 0.80, 0.5: 0.85, 1.0: 0.90, 2.0: 0.88, 4.0: 0.70}) is None


def test_best_at_the_top_edge_adds_the_next_factor_up():
    widening = widen({0.25: 0.80, 0.5: 0.85, 1.0: 0.88, 2.0: 0.89, 4.0: 0.90})
    assert widening.lr_factor == 8.0 and "largest" in widening.reason


def test_best_at_the_bottom_edge_adds_the_next_factor_down():
    widening = widen({0.25: 0.90, 0.5: 0.85, 1.0: None, 2.0: None, 4.0: None})
    assert widening.lr_factor == 0.125 and "smallest" in widening.reason


def test_widening_stops_when_the_next_factor_diverges():
    # the best x4 got x8, which diverged: the best is interior now
    assert widen({0.25: 0.80, 0.5: 0.85, 1.0: 0.88, 2.0: 0.89, 4.0: 0.90, 8.0: None}) is None


def test_widening_repeats_while_the_new_factor_is_better():
    assert widen({0.25: 0.80, 0.5: 0.85, 1.0: 0.88, 2.0: 0.89, 4.0: 0.90, 8.0: 0.91}).lr_factor == 16.0


def test_a_cell_that_diverged_everywhere_widens_downwards():
    widening = widen({f: None for f in GRID})
    assert widening.lr_factor == 0.125 and "every factor diverged" in widening.reason
    assert widen({0.125: None, **{f: None for f in GRID}}).lr_factor == 0.0625


def test_widening_stops_at_the_limit_beyond_each_end():
    below = {0.03125: None, 0.0625: None, 0.125: None, **{f: None for f in GRID}}  # 3 added below
    assert widen(below, limit=3) is None
    assert widen(below, limit=4).lr_factor == 0.015625
    above = {**{f: 0.80 for f in GRID}, 4.0: 0.85, 8.0: 0.86, 16.0: 0.87}
    assert widen(above, limit=2) is None
    assert widen(above, limit=3).lr_factor == 32.0
    assert widen({f: 0.9 + f / 100 for f in GRID}, limit=0) is None


def test_one_factor_is_no_sweep():
    assert next_factor(curve(results({1.0: 0.9})), 1.0, 1.0, 3) is None
    sweep = analyse(results({1.0: 0.9}))
    assert not sweep.swept and sweep.width_log2 is None and sweep.best.lr_factor == 1.0


def test_the_step_beyond_an_edge_follows_the_edge_spacing():
    # factors in steps of 3 at the top: the next is x3 again
    points = curve(results({1.0: 0.8, 3.0: 0.85, 9.0: 0.9}))
    assert next_factor(points, 1.0, 9.0, 3).lr_factor == pytest.approx(27.0)


def test_range_width_counts_consecutive_factors_within_half_a_point():
    # best 0.900 at x1; x0.5 0.896 and x2 0.895 are within 0.5 point; x0.25 0.894 is 0.6 below
    sweep = analyse(results({0.25: 0.894, 0.5: 0.896, 1.0: 0.900, 2.0: 0.895, 4.0: 0.80}))
    assert sweep.range_factors == (0.5, 2.0) and sweep.width_log2 == 2.0
    assert not sweep.open_low and not sweep.open_high and not sweep.at_edge


def test_range_is_broken_by_a_diverged_factor_and_open_at_the_ends():
    sweep = analyse(results({0.25: 0.899, 0.5: 0.900, 1.0: None, 2.0: 0.900, 4.0: 0.899}))
    # x2 and x4 are as good, but the diverged x1 separates them from the best (x0.5)
    assert sweep.best.lr_factor == 0.5
    assert sweep.range_factors == (0.25, 0.5) and sweep.width_log2 == 1.0
    assert sweep.open_low and not sweep.open_high


def test_range_of_an_isolated_best_is_zero_wide():
    sweep = analyse(results({0.25: 0.80, 0.5: 0.85, 1.0: 0.90, 2.0: 0.85, 4.0: 0.80}))
    assert sweep.width_log2 == 0.0 and sweep.range_factors == (1.0, 1.0)


def test_exactly_half_a_point_below_is_inside():
    sweep = analyse(results({0.5: 0.9050, 1.0: 0.9100, 2.0: 0.9049}))
    assert sweep.range_factors == (0.5, 1.0)
    assert math.isclose(sweep.width_log2, 1.0)


def test_curve_uses_the_seeds_present_at_every_factor_and_the_best_all_its_seeds():
    runs = results({0.5: 0.88, 1.0: 0.90, 2.0: 0.89}) + [Result(1.0, 1, 0.92, False), Result(1.0, 2, None, True)]
    assert curve_seeds(runs) == {0}
    sweep = analyse(runs)
    # the curve compares seed 0 alone; the best factor's top-1 is over every finished seed there
    assert [p.top1 for p in sweep.points] == [0.88, 0.90, 0.89]
    assert sweep.best_top1s == [0.90, 0.92] and sweep.best_diverged == 1
    assert sweep.best_mean == pytest.approx(0.91) and sweep.best_std == pytest.approx(math.sqrt(2e-4))


def test_a_factor_where_any_curve_seed_diverged_counts_as_diverged():
    runs = results({1.0: 0.90, 2.0: 0.95}) + results({1.0: 0.91, 2.0: None}, seed=1)
    points = curve(runs)
    assert points[1].diverged and best_point(points).lr_factor == 1.0
    assert points[0].top1 == pytest.approx(0.905) and points[0].seeds == (0, 1)


def test_a_widened_factor_is_written_exactly_by_its_run_name():
    # 0.3 x 0.3 / 0.6 is 0.15000000000000002 in floating point; the run name says 0.15
    widening = next_factor(curve(results({0.3: 0.9, 0.6: 0.8, 1.2: 0.7})), 0.3, 1.2, 3)
    assert widening.lr_factor == 0.15 and f"{widening.lr_factor:g}" == "0.15"


def test_runs_below_min_top1_count_as_failed_and_the_sweep_widens_past_them():
    """The observed case: Nesterov SGD at batch 16384, x1/16 ended at 20.4%, x1/8 at 32.7%, the
    larger factors diverged. Ranked as they are, x1/8 is an interior best (a finished neighbour
    below, a diverged one above); as failures (below min_top1 0.5) the cell failed everywhere and
    widens downwards."""
    results = [Result(0.0625, 0, 0.2045, False), Result(0.125, 0, 0.3274, False)] + [
        Result(f, 0, None, True) for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert next_factor(curve(results), 0.25, 4.0, 6) is None
    failed = failed_below(results, 0.5)
    assert best_point(curve(failed)) is None
    widening = next_factor(curve(failed), 0.25, 4.0, 6)
    assert widening.lr_factor == 0.03125 and "every factor diverged" in widening.reason
    assert failed_below(results, 0.0) == results
    assert failed_below([Result(1.0, 0, 0.9, False)], 0.5) == [Result(1.0, 0, 0.9, False)]
