"""DDP-style overlap: buckets, readiness during the backward pass, one communication stream."""

import pytest

from largebatch.plan.overlap import DDP_BUCKET_BYTES, bucket_sizes, exposed_seconds


def test_bucket_sizes():
    assert DDP_BUCKET_BYTES == 25 * 2 ** 20
    assert bucket_sizes(100, 30) == [30, 30, 30, 10]
    assert bucket_sizes(90, 30) == [30, 30, 30]
    assert bucket_sizes(10, 30) == [10]
    assert bucket_sizes(0, 30) == []


def test_one_bucket_hides_nothing():
    assert exposed_seconds(100, 100, backward_s=1.0, allreduce_seconds=lambda n: n / 50) == pytest.approx(2.0)
    assert exposed_seconds(100, 1000, backward_s=1.0, allreduce_seconds=lambda n: n / 50) == pytest.approx(2.0)


def test_fast_all_reduce_leaves_only_the_last_bucket():
    # Ten buckets ready every 0.1 s, each reduced in 0.05 s: only the last runs past the end.
    assert exposed_seconds(100, 10, backward_s=1.0, allreduce_seconds=lambda n: 0.005 * n) == pytest.approx(0.05)


def test_slow_all_reduce_queues_behind_the_first_bucket():
    # Four buckets ready at 0.25, 0.5, 0.75, 1.0; each takes 0.5 s: they run back to back from
    # 0.25 s and end at 2.25 s, 1.25 s after the backward pass.
    assert exposed_seconds(100, 25, backward_s=1.0, allreduce_seconds=lambda n: 0.02 * n) == pytest.approx(1.25)


def test_per_bucket_latency_is_paid_per_bucket():
    # A fixed 0.1 s per all-reduce: more buckets hide more bytes but pay more latency.
    time = lambda n: 0.1 + n / 1000  # noqa: E731
    assert exposed_seconds(100, 100, 0.0, time) == pytest.approx(0.2)    # no backward to hide behind
    assert exposed_seconds(100, 10, 0.0, time) == pytest.approx(10 * 0.1 + 0.1)
