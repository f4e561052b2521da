"""Calibration: the alpha-beta fit, a tiny timed training run and rate curve, the decode rate, and
the preset plan reads."""

import json

import pytest

from largebatch.benchmark import (curve_batches, fit_alpha_beta, measure_allreduce, measure_decode_rate,
                                  measure_training_rate)
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


def test_benchmark_writes_a_curve_and_a_decode_rate_plan_can_use(tmp_path, capsys):
    output = tmp_path / "local.json"
    assert main(["benchmark", "--model", "fast_resnet", "--batch-size", "16", "--curve-batches", "4,8",
                 "--steps", "2", "--warmup", "1", "--threads", "1", "--skip-allreduce", "--decode-images", "4",
                 "--output", str(output)]) == 0
    document = json.loads(output.read_text())
    device = document["device"]
    rate = device["reference_images_per_second"]
    assert rate > 0 and device["reference_model"] == "fast_resnet" and device["reference_batch"] == 16
    assert device["curve_batches"] == [4, 8, 16] and len(device["curve_images_per_second"]) == 3
    assert device["curve_images_per_second"][2] == rate  # the reference point is one of the curve's
    assert device["decode_images_per_second"] > 0 and device["decoder"] == "same-cores"
    assert device["cores_per_node"] >= 1
    capsys.readouterr()
    common = ["plan", "--device-file", str(output), "--model", "fast_resnet", "--images", "60000", "--epochs", "1",
              "--processors", "1", "--json"]
    # p = 1: images x epochs / R(b), at the reference batch and at another point of the curve
    # (fast_resnet's 28-pixel inputs are held in memory: no decoding).
    assert main([*common, "--batch-size", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["total_s"] == pytest.approx(60000 / rate)
    assert main([*common, "--batch-size", "4"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["images_per_second"] == pytest.approx(device["curve_images_per_second"][0])
    assert plan["total_s"] == pytest.approx(60000 / device["curve_images_per_second"][0])
    # A JPEG-trained model on the same preset pays the measured decode on the same cores.
    assert main(["plan", "--device-file", str(output), "--model", "resnet18", "--images", "60000", "--epochs", "1",
                 "--batch-size", "16", "--processors", "1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["decoder"] == "same-cores"
    assert plan["input_s_per_iter"] == pytest.approx(16 / (device["cores_per_node"] * device["decode_images_per_second"]))


def test_curve_batches():
    assert curve_batches("", 256) == [32, 64, 128, 256]
    assert curve_batches("64,128", 256) == [64, 128, 256]
    assert curve_batches("8, 4", 16) == [4, 8, 16]
    for text in ("64", "x,y", "0,8", "16,16"):
        with pytest.raises(ConfigError, match="--curve-batches"):
            curve_batches(text, 16)


def test_decode_rate_of_our_loader(tmp_path):
    result = measure_decode_rate(images=4, size=64, repeats=1)
    assert result["images_per_second_per_core"] > 0 and result["images"] == 4
    with pytest.raises(ConfigError, match="no .jpg"):
        measure_decode_rate(images=4, folder=str(tmp_path))
    with pytest.raises(ConfigError, match="not a folder"):
        measure_decode_rate(images=4, folder=str(tmp_path / "missing"))


@pytest.mark.slow
def test_allreduce_between_two_processes():
    rows = measure_allreduce([4096, 4_000_000], processes=2, repeats=2, warmup=1)
    assert [r["bytes"] for r in rows] == [4096, 4_000_000]
    for row in rows:
        assert row["median_s"] > 0
        assert row["bus_bandwidth"] == pytest.approx(row["algorithm_bandwidth"])  # 2(p-1)/p = 1 for p = 2
