"""Calibration: the alpha-beta fit, a tiny timed training run, and the preset plan reads."""

import json

import pytest

from largebatch.benchmark import fit_alpha_beta, measure_allreduce, measure_training_rate
from largebatch.cli import main
from largebatch.errors import ConfigError


def test_fit_recovers_bandwidth_and_latency():
    bandwidth, latency, p = 2.5e9, 40e-6, 2
    sizes = [4e3, 1e6, 4e6, 25.6e6, 100e6]
    seconds = [2 * (p - 1) / p * n / bandwidth + 2 * (p - 1) * latency for n in sizes]
    fitted = fit_alpha_beta(sizes, seconds, p)
    assert fitted == pytest.approx((bandwidth, latency), rel=1e-9)
    # Four processes: the same model, other coefficients.
    seconds = [2 * 3 / 4 * n / bandwidth + 6 * latency for n in sizes]
    assert fit_alpha_beta(sizes, seconds, 4) == pytest.approx((bandwidth, latency), rel=1e-9)


def test_fit_needs_two_sizes_and_growing_times():
    with pytest.raises(ConfigError):
        fit_alpha_beta([1e6, 1e6], [1e-3, 1e-3], 2)
    with pytest.raises(ConfigError):
        fit_alpha_beta([1e6, 2e6], [2e-3, 1e-3], 2)


def test_training_rate_on_fast_resnet():
    result = measure_training_rate("fast_resnet", batch_size=16, micro_batch_size=8, steps=2, warmup=1, threads=1)
    assert result["images_per_second"] > 0
    assert result["micro_batch_size"] == 8
    assert result["images_per_second"] == pytest.approx(16 / result["median_step_s"])
    with pytest.raises(ConfigError, match="--micro-batch-size"):
        measure_training_rate("fast_resnet", batch_size=16, micro_batch_size=5, steps=1)


def test_benchmark_writes_a_preset_plan_can_use(tmp_path, capsys):
    output = tmp_path / "local.json"
    assert main(["benchmark", "--model", "fast_resnet", "--batch-size", "16", "--steps", "2", "--warmup", "1",
                 "--threads", "1", "--skip-allreduce", "--output", str(output)]) == 0
    document = json.loads(output.read_text())
    rate = document["device"]["reference_images_per_second"]
    assert rate > 0 and document["device"]["reference_model"] == "fast_resnet"
    capsys.readouterr()
    assert main(["plan", "--device-file", str(output), "--model", "fast_resnet", "--images", "60000",
                 "--epochs", "1", "--batch-size", "16", "--processors", "1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["total_s"] == pytest.approx(60000 / rate)


@pytest.mark.slow
def test_allreduce_between_two_processes():
    rows = measure_allreduce([4096, 4_000_000], processes=2, repeats=2, warmup=1)
    assert [r["bytes"] for r in rows] == [4096, 4_000_000]
    for row in rows:
        assert row["median_s"] > 0
        assert row["bus_bandwidth"] == pytest.approx(row["algorithm_bandwidth"])  # 2(p-1)/p = 1 for p = 2
    assert rows[1]["median_s"] > rows[0]["median_s"]
