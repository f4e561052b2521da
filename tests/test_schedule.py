import math

import pytest

from largebatch.config import ScheduleConfig
from largebatch.errors import ConfigError
from largebatch.schedule import Schedule, build_schedule, scaled_lr, steps_for


def test_warmup_endpoints_are_linear_per_step():
    s = Schedule(peak_lr=8.0, total_steps=100, warmup_steps=4, decay="poly", power=2.0)
    assert [s(t) for t in range(4)] == [2.0, 4.0, 6.0, 8.0]
    assert s(4) == 8.0  # decay starts from the peak


def test_poly_decay_endpoints_and_shape():
    s = Schedule(peak_lr=2.0, total_steps=110, warmup_steps=10, decay="poly", power=2.0)
    assert s(10) == 2.0
    assert s(60) == pytest.approx(2.0 * 0.5 ** 2)       # half way: (1 - 1/2)^2
    assert s(85) == pytest.approx(2.0 * 0.25 ** 2)
    assert s(109) == pytest.approx(2.0 * (1 / 100) ** 2)
    assert s(110) == 0.0
    values = [s(t) for t in range(10, 111)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing


def test_cosine_step_and_constant():
    cosine = Schedule(peak_lr=1.0, total_steps=20, warmup_steps=0, decay="cosine")
    assert cosine(0) == 1.0 and cosine(10) == pytest.approx(0.5) and cosine(20) == pytest.approx(0.0)
    step = Schedule(peak_lr=1.0, total_steps=100, decay="step", milestone_steps=(30, 60), step_gamma=0.1)
    assert (step(29), step(30), step(59), step(60)) == (1.0, pytest.approx(0.1), pytest.approx(0.1),
                                                        pytest.approx(0.01))
    assert Schedule(peak_lr=0.3, total_steps=5, decay="constant")(4) == 0.3


def test_scaling_rules():
    assert scaled_lr(0.1, 8192, 256, "linear") == pytest.approx(3.2)  # Goyal et al.: 0.1 per 256
    assert scaled_lr(1.0, 1024, 256, "sqrt") == pytest.approx(2.0)
    assert scaled_lr(5.0, 32768, 256, "none") == 5.0


def test_epochs_become_steps_with_a_fractional_epoch():
    assert steps_for(1, 60000, 4096) == 15  # 14.65 steps: the last epoch's partial batch is kept
    assert steps_for(20, 60000, 16384) == math.ceil(20 * 60000 / 16384)
    assert steps_for(90, 1281167, 32768) == 3519
    config = ScheduleConfig(warmup_epochs=5, decay="step", milestones=[30, 60])
    s = build_schedule(config, 1.0, 90, 1281167, 32768)
    assert (s.total_steps, s.warmup_steps) == (3519, steps_for(5, 1281167, 32768))
    assert s.milestone_steps == (steps_for(30, 1281167, 32768), steps_for(60, 1281167, 32768))


def test_warmup_from_a_start_lr_rises_by_equal_steps_to_the_peak():
    # Goyal et al. 2017, sec. 2.2 / 5.2: from eta = 0.1, a constant increment per iteration, to 3.2
    s = Schedule(peak_lr=3.2, total_steps=100, warmup_steps=4, decay="step", milestone_steps=(50,),
                 warmup_start_lr=0.1)
    assert s(0) == 0.1  # the first step runs at exactly the start LR
    increments = [s(t + 1) - s(t) for t in range(4)]
    assert increments == pytest.approx([3.1 / 4] * 4)
    assert s(4) == 3.2 and s(49) == 3.2 and s(50) == pytest.approx(0.32)


def test_default_warmup_is_unchanged_by_the_new_options():
    # today's numerics: the first step at peak / W, the peak on the last warmup step
    default = Schedule(peak_lr=8.0, total_steps=100, warmup_steps=4, decay="poly", power=2.0)
    explicit = Schedule(peak_lr=8.0, total_steps=100, warmup_steps=4, decay="poly", power=2.0,
                        warmup_start_lr=0.0, decay_from="warmup_end")
    assert [default(t) for t in range(101)] == [explicit(t) for t in range(101)]
    assert default(0) == 2.0 and default(3) == 8.0 and default(52) == pytest.approx(8.0 * 0.5 ** 2)


def test_poly_decay_from_the_start_steps_down_at_the_warmup_end():
    # You, Gitman, Ginsburg 2017, Algorithm 1: gamma_t = gamma_0 (1 - t/T)^2 on the global step
    start = Schedule(peak_lr=2.0, total_steps=100, warmup_steps=10, decay="poly", power=2.0, decay_from="start")
    after_warmup = Schedule(peak_lr=2.0, total_steps=100, warmup_steps=10, decay="poly", power=2.0)
    assert start(9) == after_warmup(9) == 2.0  # same warmup
    assert start(10) == pytest.approx(2.0 * 0.9 ** 2)  # stepped down by 19% of the peak
    assert after_warmup(10) == 2.0
    assert start(50) == pytest.approx(2.0 * 0.25) and after_warmup(55) == pytest.approx(2.0 * 0.25)
    assert start(100) == after_warmup(100) == 0.0
    assert all(start(t) <= after_warmup(t) for t in range(101))
    cosine = Schedule(peak_lr=1.0, total_steps=20, warmup_steps=5, decay="cosine", decay_from="start")
    assert cosine(10) == pytest.approx(0.5)


def test_the_32k_recipe_numbers_of_both_decay_forms():
    # 90 epochs at 32K: T = 3519, W = 196 (5 epochs); the start form steps down 10.9% at W
    config = ScheduleConfig(warmup_epochs=5, decay="poly", power=2.0, decay_from="start")
    s = build_schedule(config, 2.9, 90, 1281167, 32768)
    assert (s.total_steps, s.warmup_steps) == (3519, 196)
    assert 1 - s(196) / 2.9 == pytest.approx(1 - (1 - 196 / 3519) ** 2)
    assert 1 - s(196) / 2.9 == pytest.approx(0.1083, abs=1e-4)


def test_a_warmup_start_above_the_peak_is_refused():
    with pytest.raises(ConfigError, match="schedule.warmup_start_lr"):
        build_schedule(ScheduleConfig(warmup_epochs=1, warmup_start_lr=5.0), 3.2, 10, 1000, 100)
    with pytest.raises(ValueError, match="decay origin"):
        Schedule(peak_lr=1.0, total_steps=10, decay_from="middle")(3)
