import math

import pytest

from largebatch.config import build_config, load_recipe
from largebatch.derive import derive, split_batch, with_micro_batch
from largebatch.errors import ConfigError


def config(**overrides):
    return build_config(load_recipe("fashion_mnist"), overrides)


def test_split_batch_splits_the_global_batch():
    split = split_batch(32768, 1, 256)
    assert (split.per_process_batch, split.accumulation_steps) == (32768, 128)
    split = split_batch(4096, 4, 0, "cpu")
    assert (split.per_process_batch, split.micro_batch_size, split.accumulation_steps) == (1024, 128, 8)
    assert split_batch(4096, 4, 0, "cuda").micro_batch_size == 256
    assert split_batch(1000, 1, 128).accumulation_steps == 8  # micro-batches of 125
    with pytest.raises(ConfigError, match="divisible"):
        split_batch(100, 3)


def test_derive_gives_every_number_of_the_run():
    plan = derive(config(), 1, 60_000, 10_000)
    assert plan.global_batch_size == 4096 and plan.per_process_batch == 4096
    assert (plan.micro_batch_size, plan.accumulation_steps) == (128, 32)
    assert plan.peak_lr == 10.0
    assert plan.total_steps == math.ceil(5 * 60_000 / 4096) == 74
    assert plan.warmup_steps == math.ceil(1.5 * 60_000 / 4096) == 22
    assert plan.steps_per_epoch == pytest.approx(60_000 / 4096)
    assert plan.lr_at(plan.warmup_steps - 1) == plan.peak_lr
    # the sqrt rule from 4096 to 16384 doubles the LR
    plan = derive(config(**{"run.batch_size": 16384, "schedule.scaling": "sqrt", "schedule.base_batch_size": 4096}),
                  4, 60_000, 10_000)
    assert plan.peak_lr == pytest.approx(20.0)
    assert plan.per_process_batch == 4096


def test_lr_points_cover_warmup_and_every_tenth():
    plan = derive(config(), 1, 60_000, 10_000)
    steps = [step for step, _ in plan.lr_points()]
    assert steps[0] == 0 and steps[-1] == plan.total_steps - 1
    assert {plan.warmup_steps - 1, plan.warmup_steps} <= set(steps)
    assert len(steps) >= 11
    assert all(lr == plan.lr_at(step) for step, lr in plan.lr_points())


def test_micro_batch_override_keeps_the_global_batch():
    plan = with_micro_batch(derive(config(), 2, 60_000, 10_000), 64)
    assert (plan.per_process_batch, plan.micro_batch_size, plan.accumulation_steps) == (2048, 64, 32)


def test_impossible_numbers_are_refused_by_name():
    with pytest.raises(ConfigError, match="larger than the training set"):
        derive(config(**{"run.batch_size": 65536}), 1, 60_000, 10_000)
    with pytest.raises(ConfigError, match="no images"):
        derive(config(), 1, 0, 10)


def test_describe_is_a_short_aligned_block():
    text = derive(config(), 1, 60_000, 10_000).describe()
    lines = text.splitlines()
    assert 4 <= len(lines) <= 8 and all(len(line) < 100 for line in lines)
    assert "4,096" in text and "32 accumulated" in text
