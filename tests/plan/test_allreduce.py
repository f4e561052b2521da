"""The alpha-beta all-reduce costs against hand-computed cases and their properties."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from largebatch.plan import allreduce as ar

MB = 1e6


def test_ring_formula_by_hand():
    # 100 MB over 4 processes at 10 GB/s, 5 us per step:
    # 2 * 3/4 * 1e8 / 1e10 = 0.015 s; 2 * 3 * 5e-6 = 3e-5 s.
    assert ar.ring_seconds(100 * MB, 4, 10e9, 5e-6) == pytest.approx(0.015 + 3e-5, rel=1e-12)
    # Two processes: each sends half the buffer twice (n * beta) and pays two latencies.
    assert ar.ring_seconds(8 * MB, 2, 1e9, 1e-3) == pytest.approx(8e-3 + 2e-3, rel=1e-12)
    # ResNet-50's 102.2 MB of FP32 gradients on 1,024 processes over 12.5 GB/s, 1 us:
    # 2 * 1023/1024 * 102.228128e6 / 12.5e9 = 16.3405 ms, + 2046 us.
    n = 25_557_032 * 4
    assert ar.ring_seconds(n, 1024, 12.5e9, 1e-6) == pytest.approx(2 * 1023 / 1024 * n / 12.5e9 + 2046e-6, rel=1e-12)
    assert ar.ring_seconds(n, 1024, 12.5e9, 1e-6) == pytest.approx(0.0183865, rel=1e-5)


def test_one_process_costs_nothing():
    links = ar.Links(1e9, 1e-6, 1e10, 1e-6, devices_per_node=8)
    assert ar.ring_seconds(1e9, 1, 1e9, 1.0) == 0
    assert ar.halving_doubling_seconds(1e9, 1, 1e9, 1.0) == 0
    assert all(t.total_s == 0 for t in ar.all_algorithms(1e9, 1, links).values())


def test_halving_doubling_by_hand():
    # 8 processes: 3 halving + 3 doubling steps; same bytes as the ring.
    assert ar.halving_doubling_seconds(80 * MB, 8, 10e9, 1e-5) == pytest.approx(2 * 7 / 8 * 8e-3 + 6e-5)
    # 5 processes round up to 3 steps each way.
    assert ar.halving_doubling_seconds(0.0, 5, 1e9, 1e-5) == pytest.approx(6e-5)


def test_flat_ring_and_tree_use_the_right_links():
    links = ar.Links(network_bandwidth=10e9, network_latency=2e-6, intra_bandwidth=100e9, intra_latency=1e-6,
                     devices_per_node=8)
    n = 100 * MB
    # Inside one node: in-node link and latency.
    assert ar.ring(n, 8, links).total_s == pytest.approx(ar.ring_seconds(n, 8, 100e9, 1e-6))
    # Across nodes the ring is limited by the slower link, with the network's latency.
    assert ar.ring(n, 32, links).total_s == pytest.approx(ar.ring_seconds(n, 32, 10e9, 2e-6))
    # The flat tree shares each node's network bandwidth among its 8 processes.
    assert ar.tree(n, 32, links).total_s == pytest.approx(ar.halving_doubling_seconds(n, 32, 10e9 / 8, 2e-6))
    # One process per node: the network alone.
    single = ar.Links(10e9, 2e-6, 100e9, 1e-6, devices_per_node=1)
    assert ar.ring(n, 16, single).total_s == pytest.approx(ar.ring_seconds(n, 16, 10e9, 2e-6))


def test_hierarchical_by_hand():
    # 4 nodes of 4: in-node 2*3/4 * n / 40e9 + 6 * 1 us; between nodes 2*3/4 * n / 20e9 + 2*2 * 3 us.
    links = ar.Links(network_bandwidth=20e9, network_latency=3e-6, intra_bandwidth=40e9, intra_latency=1e-6,
                     devices_per_node=4)
    n = 80 * MB
    t = ar.hierarchical(n, 16, links)
    assert t.bandwidth_s == pytest.approx(1.5 * 8e7 / 40e9 + 1.5 * 8e7 / 20e9)
    assert t.latency_s == pytest.approx(6e-6 + 12e-6)
    assert t.total_s == pytest.approx(0.003 + 0.006 + 18e-6)


def test_hierarchical_beats_flat_ring_on_latency_at_scale():
    links = ar.Links(12.5e9, 5e-6, 75e9, 5e-6, devices_per_node=8)
    flat, layered = ar.ring(1 * MB, 4096, links), ar.hierarchical(1 * MB, 4096, links)
    assert layered.latency_s < flat.latency_s / 10


@given(n=st.floats(1e3, 1e10), p=st.integers(2, 100_000), bandwidth=st.floats(1e6, 1e12),
       latency=st.floats(0, 1e-3))
def test_ring_properties(n, p, bandwidth, latency):
    t = ar.ring_seconds(n, p, bandwidth, latency)
    # The bandwidth term never exceeds 2n/bandwidth, however many processes; latency grows linearly.
    assert t <= 2 * n / bandwidth + 2 * (p - 1) * latency + 1e-12
    assert t >= n / bandwidth  # p >= 2: at least n * beta
    assert ar.ring_seconds(n, p + 1, bandwidth, latency) >= t
    assert ar.halving_doubling_seconds(n, p, bandwidth, latency) <= t + 1e-12
    assert math.isfinite(t)
