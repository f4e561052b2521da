"""Time to a target: S(B) = S_min (1 + B_noise / B) times the hardware model's iteration time."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from largebatch.cli import main
from largebatch.errors import ConfigError
from largebatch.plan.estimate import Setup, model_cost, plan_time
from largebatch.plan.presets import Network, get_device, get_network
from largebatch.plan.statistical import StepsModel, plan_grid, recommend, steps_model_from_sources, time_to_target

SRC = str(Path(__file__).resolve().parents[2] / "src")
MODEL = StepsModel(min_steps=1000, noise_scale=1000)
RATE = 100.0  # images/s per processor


def ideal_setup() -> Setup:
    """No communication cost: time(B, p) = S(B) B / (p R) = S_min (B + B_noise) / (p R)."""
    device = dataclasses.replace(get_device("v100"), intra_bandwidth=1e30, intra_latency=0.0)
    return Setup(model=model_cost("resnet50"), device=device, network=Network("ideal", "", 1e30, 0.0),
                 images_per_second=RATE)


def test_steps_model_is_the_papers_relation():
    assert MODEL.steps(1000) == 2000 and MODEL.examples(1000) == 2_000_000  # B = B_noise: 2 S_min, 2 E_min
    assert MODEL.min_examples == 1_000_000
    for batch in (10, 100, 10_000):
        steps, examples = MODEL.steps(batch), MODEL.examples(batch)
        assert (steps / MODEL.min_steps - 1) * (examples / MODEL.min_examples - 1) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="--noise-scale"):
        StepsModel(1000, 0)


def test_one_processor_time_is_examples_over_rate():
    grid = plan_grid(ideal_setup(), MODEL, [32, 256, 2048], [1])
    # S_min (B + B_noise) / R: 1000 x 1032 / 100, 1000 x 1256 / 100, 1000 x 3048 / 100
    assert [o.time_s for o in grid.options] == pytest.approx([10_320.0, 12_560.0, 30_480.0])
    assert [o.processor_hours for o in grid.options] == pytest.approx([10_320 / 3600, 12_560 / 3600, 30_480 / 3600])
    fastest, cheapest, _ = recommend(grid, MODEL)
    assert (fastest.option.batch_size, fastest.option.processors) == (32, 1)
    assert (cheapest.option.batch_size, cheapest.option.processors) == (32, 1)
    assert "one processor has no all-reduce" in cheapest.reason


def test_recommendations_with_free_communication_are_hand_computable():
    batches = [2 ** k for k in range(5, 13)]   # 32 .. 4096
    counts = [2 ** k for k in range(0, 13)]    # 1 .. 4096
    grid = plan_grid(ideal_setup(), MODEL, batches, counts)
    assert all(o.batch_size >= o.processors for o in grid.options)
    fastest, cheapest, balanced = recommend(grid, MODEL)
    # fastest: the largest batch, one image per processor: S(4096) / R = 1000 (1 + 1000/4096) / 100
    assert (fastest.option.batch_size, fastest.option.processors) == (4096, 4096)
    assert fastest.option.time_s == pytest.approx(12.44140625)
    assert "largest batch of the grid" in fastest.reason and "most processors of the grid" in fastest.reason
    # fewest processor-hours: S_min (B + B_noise) / (3600 R), least at B = 32 whatever p <= 32; the
    # fastest of those ties is p = 32: 1000 x 1032 / (32 x 100) s
    assert (cheapest.option.batch_size, cheapest.option.processors) == (32, 32)
    assert cheapest.option.time_s == pytest.approx(322.5)
    assert cheapest.option.processor_hours == pytest.approx(1000 * 1032 / 100 / 3600)
    # balanced: B + 1000 <= 2 x 1032, so B <= 1064: batch 1024 on 1024, 1000 (1 + 1000/1024) / 100 s
    assert (balanced.option.batch_size, balanced.option.processors) == (1024, 1024)
    assert balanced.option.time_s == pytest.approx(19.765625)


def test_time_is_steps_times_the_hardware_models_iteration():
    setup = Setup(model=model_cost("resnet50"), device=get_device("v100"), network=get_network("ib-edr"))
    option = time_to_target(setup, MODEL, 8192, 64)
    plan = plan_time(setup, 8192, 64)
    assert option.steps == pytest.approx(1000 * (1 + 1000 / 8192))
    assert option.time_s == pytest.approx(option.steps * plan.iter_s)
    assert option.processor_hours == pytest.approx(option.time_s * 64 / 3600)
    assert option.bound == plan.bound


def test_min_per_processor_limits_the_grid_and_the_reason_says_so():
    grid = plan_grid(ideal_setup(), MODEL, [1024, 2048], [1, 2, 4, 8, 16, 32, 64], min_per_processor=64)
    assert max(o.processors for o in grid.options if o.batch_size == 1024) == 16
    fastest = recommend(grid, MODEL)[0]
    assert (fastest.option.batch_size, fastest.option.processors) == (2048, 32)
    assert "64 processors would get fewer than 64 images each" in fastest.reason
    with pytest.raises(ConfigError, match="--min-per-processor"):
        plan_grid(ideal_setup(), MODEL, [32], [1], min_per_processor=64)


# --- reading S_min and B_noise from runs and studies ---------------------------------------------

def write_run(directory: Path, batch: int, crossing_step: float, noise: float | None = None,
              images: int = 60000) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.toml").write_text(f'[optimizer]\nname = "lars"\n\n[run]\nbatch_size = {batch}\nseed = 0\n')
    per_epoch = images / batch
    lines = []
    for epoch in range(1, int(crossing_step / per_epoch) + 3):
        step = round(epoch * per_epoch)
        record = {"epoch": epoch, "step": step, "top1": 0.8 + 0.1 * step / crossing_step}
        if noise is not None:
            record.update(grad_noise_scale=noise, grad_norm_sq=1.0, grad_trace_sigma=noise)
        lines.append(json.dumps(record))
    (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (directory / "summary.json").write_text(json.dumps({"global_batch_size": batch, "top1": min(1.0, record["top1"]),
                                                        "epochs": epoch, "steps": step}))
    return directory


def test_from_run_gives_noise_scale_and_min_steps(tmp_path):
    run = write_run(tmp_path / "run", 256, 2000.0, noise=1000.0)
    model = steps_model_from_sources(from_run=str(run), target_top1=0.9)
    assert model.noise_scale == 1000.0
    # the run took 2,000 steps at B = 256: S_min = 2000 / (1 + 1000 / 256)
    assert model.min_steps == pytest.approx(2000 / (1 + 1000 / 256), rel=1e-3)
    assert "measured in" in model.source
    # explicit numbers win over the run's
    assert steps_model_from_sources(noise_scale=500.0, min_steps=77.0, from_run=str(run), target_top1=0.9) == \
        StepsModel(77.0, 500.0, "B_noise given; S_min given")
    with pytest.raises(ConfigError, match="--min-steps"):
        steps_model_from_sources(from_run=str(run))  # no target: no steps to the target


def test_from_study_gives_the_fit(tmp_path):
    study = tmp_path / "study"
    for batch in (256, 1024, 4096):
        write_run(study / f"lars-b{batch}-none-s0", batch, 400 + 1.2e6 / batch)
    model = steps_model_from_sources(from_study=str(study), target_top1=0.9)
    assert model.min_steps == pytest.approx(400, rel=0.01)
    assert model.noise_scale == pytest.approx(3000, rel=0.01)
    with pytest.raises(ConfigError, match="--target-top1"):
        steps_model_from_sources(from_study=str(study))


def test_missing_numbers_are_named():
    with pytest.raises(ConfigError, match="--noise-scale N and --min-steps S"):
        steps_model_from_sources()
    with pytest.raises(ConfigError, match="needs --min-steps S"):
        steps_model_from_sources(noise_scale=100.0)


def test_issue_example_prints_the_recommendations(capsys):
    assert main(["plan", "--model", "resnet50", "--device", "v100", "--noise-scale", "2000",
                 "--min-steps", "5000"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for label in ("fastest: batch", "fewest processor-hours: batch", "balanced (fastest within 2x"):
        matching = [line for line in lines if line.startswith(label)]
        assert len(matching) == 1 and " processor" in matching[0] and "Why: " in matching[0]
    assert "S(B) = 5,000 x (1 + 2,000 / B)" in out
    assert main(["plan", "--model", "resnet50", "--device", "v100", "--noise-scale", "2000", "--min-steps", "5000",
                 "--processors", "64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {o["processors"] for o in result["grid"]} == {64}
    assert [r["label"].split(" ")[0] for r in result["recommendations"]] == ["fastest", "fewest", "balanced"]


def test_statistical_plan_does_not_import_torch(tmp_path):
    run = write_run(tmp_path / "run", 256, 2000.0, noise=1000.0)
    code = ("import sys; from largebatch.cli import main; "
            f"main(['plan', '--device', 'v100', '--from-run', {str(run)!r}, '--target-top1', '0.9']); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "fastest: batch" in result.stdout
