import math

import pytest

from largebatch.config import ScheduleConfig
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
