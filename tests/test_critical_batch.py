"""Critical batch size: steps to a target, the (S/S_min - 1)(E/E_min - 1) = 1 fit, the command."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from largebatch.cli import main
from largebatch.critical_batch import (fit_tradeoff, noise_scale_from_run, steps_by_batch, steps_to_target,
                                       study_points)
from largebatch.errors import UserError

S_MIN, E_MIN = 400.0, 1.2e6  # B_crit = 3,000
BATCHES = [128, 512, 1024, 2048, 4096, 8192, 16384]


def formula_steps(batch: float) -> float:
    return S_MIN + E_MIN / batch  # S = S_min (1 + B_crit / B)


def test_formula_points_satisfy_the_papers_relation():
    for batch in BATCHES:
        steps = formula_steps(batch)
        assert (steps / S_MIN - 1) * (steps * batch / E_MIN - 1) == pytest.approx(1.0)


def test_steps_to_target_interpolates_between_evaluations():
    records = [{"epoch": 1, "step": 100, "top1": 0.80}, {"epoch": 2, "step": 200, "top1": 0.86},
               {"epoch": 3, "step": 300, "top1": 0.90}, {"epoch": 4, "step": 400, "top1": 0.85}]
    crossing = steps_to_target(records, 0.88)
    assert crossing.steps == pytest.approx(250.0) and crossing.epoch == pytest.approx(2.5) and not crossing.note
    first = steps_to_target(records, 0.75)
    assert first.steps == 100 and "upper bound" in first.note
    assert steps_to_target(records, 0.95) is None
    # unevaluated epochs (top1 None) are skipped
    sparse = [{"epoch": 1, "step": 10, "top1": None}, {"epoch": 2, "step": 20, "top1": 0.5},
              {"epoch": 3, "step": 30, "top1": None}, {"epoch": 4, "step": 40, "top1": 0.7}]
    assert steps_to_target(sparse, 0.6).steps == pytest.approx(30.0)


def test_fit_recovers_min_steps_min_examples_and_critical_batch_exactly():
    fit = fit_tradeoff(BATCHES, [formula_steps(b) for b in BATCHES])
    assert fit.min_steps == pytest.approx(S_MIN, rel=1e-6)
    assert fit.min_examples == pytest.approx(E_MIN, rel=1e-6)
    assert fit.critical_batch == pytest.approx(3000, rel=1e-6)
    assert fit.rms_log_residual < 1e-6 and not fit.notes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_within_five_percent_with_noise(seed):
    """1% multiplicative noise on each measured S: over 200 seeds the worst error of the three is 3.5%
    (with 3% noise the median error is 3% and the 95th percentile 8%: seven points pin B_crit only
    as well as the steps are measured)."""
    rng = random.Random(seed)
    steps = [formula_steps(b) * math.exp(rng.gauss(0, 0.01)) for b in BATCHES]
    fit = fit_tradeoff(BATCHES, steps)
    assert fit.min_steps == pytest.approx(S_MIN, rel=0.05)
    assert fit.min_examples == pytest.approx(E_MIN, rel=0.05)
    assert fit.critical_batch == pytest.approx(3000, rel=0.05)
    assert 0.001 < fit.rms_log_residual < 0.03


def test_fit_says_when_the_critical_batch_lies_outside_the_measurements():
    # perfect scaling (S = E_min / B) over the measured range: B_crit far above the largest batch
    perfect = fit_tradeoff([128, 256, 512], [E_MIN / b for b in (128, 256, 512)])
    assert perfect.critical_batch > 4 * 512 and any("beyond" in n for n in perfect.notes)
    # no scaling at all (S constant): B_crit far below the smallest batch
    flat = fit_tradeoff([1024, 2048, 4096], [500.0, 500.0, 500.0])
    assert flat.critical_batch < 1024 / 4 and any("below" in n for n in flat.notes)
    with pytest.raises(UserError, match="two batch sizes"):
        fit_tradeoff([1024, 1024], [500.0, 510.0])


# --- a synthetic study directory ---------------------------------------------------------------

def write_run(directory: Path, variant: str, batch: int, crossing_step: float, seed: int = 0,
              complete: bool = True, noise: list[float | None] | None = None, epochs: int = 0,
              images: int = 60000) -> Path:
    """A run whose top-1 rises linearly in steps and crosses 0.90 at ``crossing_step`` (by default
    it trains 3 epochs past that)."""
    run = directory / f"{variant}-b{batch}-none-s{seed}"
    run.mkdir(parents=True)
    epochs = epochs or min(200, int(crossing_step * batch / images) + 3)
    (run / "config.toml").write_text(f'[optimizer]\nname = "{variant}"\n\n[data]\naugmentation = "none"\n\n'
                                     f'[run]\nbatch_size = {batch}\nseed = {seed}\n')
    steps_per_epoch = images / batch
    lines = []
    for epoch in range(1, epochs + 1):
        step = round(epoch * steps_per_epoch)
        top1 = min(0.99, 0.80 + 0.10 * step / crossing_step)  # 0.90 exactly at crossing_step
        record = {"epoch": epoch, "step": step, "top1": top1, "top5": 1.0}
        if noise is not None:
            record.update(grad_noise_scale=noise[epoch - 1], grad_norm_sq=1.0, grad_trace_sigma=1.0,
                          grad_norm_sq_stderr=0.25)
        lines.append(json.dumps(record))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if complete:
        (run / "summary.json").write_text(json.dumps({"global_batch_size": batch, "steps": round(epochs * steps_per_epoch)}))
    return run


@pytest.fixture
def study(tmp_path) -> Path:
    directory = tmp_path / "study"
    for batch in (256, 1024, 4096, 16384):
        write_run(directory, "lars", batch, formula_steps(batch))
        write_run(directory, "sgd", batch, 2 * formula_steps(batch))
    write_run(directory, "lars", 65536, 1e9, complete=False)  # still training, not there yet
    return directory


def test_study_points_pick_the_variant_and_recover_the_steps(study):
    points = study_points(study, 0.90, "lars")
    assert [p.batch_size for p in points] == [256, 1024, 4096, 16384, 65536]
    by_batch = steps_by_batch(points)
    for batch, steps in by_batch.items():
        # linear top-1 between whole-step evaluations: interpolation is exact up to step rounding
        assert steps == pytest.approx(formula_steps(batch), rel=0.01)
    assert points[-1].steps is None and "incomplete" in points[-1].note
    with pytest.raises(UserError, match="variants found: lars, sgd"):
        study_points(study, 0.90, "lamb")


def test_noise_scale_is_read_at_the_target(tmp_path):
    run = write_run(tmp_path, "lars", 256, 700, noise=[None, 500.0, 900.0, 1200.0, 2500.0, None, None, None],
                    epochs=8)
    # steps per epoch 234.4: top-1 0.90 at step 700, epoch 2.99
    reading = noise_scale_from_run(run, 0.90)
    assert reading.value == 900.0 and reading.epoch == 3
    assert "4 of 8 epochs unresolved" in reading.note and "+- 25%" in reading.note
    last = noise_scale_from_run(run)
    assert last.value == 2500.0 and last.epoch == 5
    unresolved = write_run(tmp_path / "u", "lars", 256, 700, noise=[None] * 8, epochs=8)
    with pytest.raises(UserError, match="unresolved"):
        noise_scale_from_run(unresolved, 0.90)


def test_command_prints_table_writes_plot_and_json(study, tmp_path, capsys):
    noise_run = write_run(tmp_path / "noise", "lars", 256, formula_steps(256), noise=[2000.0] * 8,
                          epochs=8)
    assert main(["critical-batch", str(study), "--target-top1", "0.9", "--noise-run", str(noise_run)]) == 0
    out = capsys.readouterr().out
    assert "B_crit = E_min / S_min = 3,0" in out
    assert "B_crit / B_simple = 1.5" in out
    assert "not reached yet" in out
    assert (study / "critical_batch.png").stat().st_size > 10_000
    result = json.loads((study / "critical_batch.json").read_text())
    assert result["fit"]["critical_batch"] == pytest.approx(3000, rel=0.02)
    assert result["fit"]["min_steps"] == pytest.approx(S_MIN, rel=0.02)
    assert result["critical_batch_over_noise_scale"] == pytest.approx(1.5, rel=0.02)


def test_command_errors_are_one_line(study, tmp_path, capsys):
    assert main(["critical-batch", str(tmp_path / "missing"), "--target-top1", "0.9"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["critical-batch", str(study), "--target-top1", "90"]) == 2
    assert "--target-top1" in capsys.readouterr().err
    # a target no run reaches: table, no fit, exit status 1
    assert main(["critical-batch", str(study), "--target-top1", "0.995"]) == 1
    assert "the fit needs two" in capsys.readouterr().out
