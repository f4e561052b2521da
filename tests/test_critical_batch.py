"""Critical batch size: steps to a target, the (S/S_min - 1)(E/E_min - 1) = 1 fit, the command."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from largebatch.cli import main
from largebatch.critical_batch import (RunPoint, best_factors, fit_tradeoff, noise_scale_from_run, steps_by_batch,
                                       steps_to_target, study_points)
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
    # nearly perfect scaling over the measured range: B_crit far above the largest batch
    nearly = fit_tradeoff([128, 256, 512], [S_MIN / 10 + E_MIN / b for b in (128, 256, 512)])
    assert nearly.critical_batch > 4 * 512 and any("beyond" in n for n in nearly.notes)
    # hardly any scaling: B_crit far below the smallest batch
    hardly = fit_tradeoff([1024, 2048, 4096], [500.0 + 2e4 / b for b in (1024, 2048, 4096)])
    assert hardly.critical_batch < 1024 / 4 and any("below" in n for n in hardly.notes)
    with pytest.raises(UserError, match="two batch sizes"):
        fit_tradeoff([1024, 1024], [500.0, 510.0])


def test_a_fit_whose_s_min_or_e_min_vanishes_is_refused():
    # perfect scaling (S = E_min / B), as when every run reaches the target at its first evaluation:
    # the least-squares S_min is 0 and B_crit unbounded (it printed B_crit = 16,966,264,646 before)
    with pytest.raises(UserError, match=r"S_min at .* effectively 0 .*: the steps fall as 1/B") as error:
        fit_tradeoff([128, 256, 512], [E_MIN / b for b in (128, 256, 512)])
    assert "\n" not in str(error.value)
    # no scaling at all (S constant): E_min is 0
    with pytest.raises(UserError, match="E_min at .* effectively 0: the steps do not fall"):
        fit_tradeoff([1024, 2048, 4096], [500.0, 500.0, 500.0])


# --- a synthetic study directory ---------------------------------------------------------------

def write_run(directory: Path, variant: str, batch: int, crossing_step: float, seed: int = 0,
              complete: bool = True, noise: list[float | None] | None = None, epochs: int = 0,
              images: int = 60000, factor: float | None = None, final_top1: float | None = None,
              optimizer: str = "") -> Path:
    """A run whose top-1 rises linearly in steps from 0.80 and crosses 0.90 at ``crossing_step``
    (by default it trains 3 epochs past that); ``factor``: a run of an LR sweep (``-lr<factor>``);
    ``final_top1``: its summary's top-1 (default: the last evaluation's)."""
    run = directory / (f"{variant}-b{batch}-none-s{seed}" + (f"-lr{factor:g}" if factor else ""))
    run.mkdir(parents=True)
    epochs = epochs or min(200, int(crossing_step * batch / images) + 3)
    (run / "config.toml").write_text(f'[optimizer]\nname = "{optimizer or variant}"\n\n[data]\n'
                                     f'augmentation = "none"\n\n[run]\nbatch_size = {batch}\nseed = {seed}\n')
    steps_per_epoch = images / batch
    lines = []
    top1 = None
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
        (run / "summary.json").write_text(json.dumps({
            "global_batch_size": batch, "steps": round(epochs * steps_per_epoch), "epochs": epochs,
            "top1": final_top1 if final_top1 is not None else top1}))
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
    # a target no run reaches: the table, then one line saying why there is no fit, exit status 2
    assert main(["critical-batch", str(study), "--target-top1", "0.995"]) == 2
    captured = capsys.readouterr()
    assert "not reached in" in captured.out and captured.err.count("\n") == 1
    assert "the fit needs measured steps at two batch sizes or more (measured at no batch size; never reached at " \
           "256, 1024, 4096, 16384)" in captured.err
    assert not (study / "critical_batch.json").exists()


# --- the tuned sweep: best-factor runs, bounds, damaged runs, bounds on arguments ----------------

def test_the_best_factor_by_final_top1_stands_for_a_batch_size(tmp_path):
    study = tmp_path / "tuned"
    for batch in (1024, 4096):
        # x1: reaches the target later but ends better; x2: faster to the target, ends worse
        write_run(study, "sgd_nesterov", batch, formula_steps(batch), factor=1.0, final_top1=0.93, optimizer="sgd")
        write_run(study, "sgd_nesterov", batch, formula_steps(batch) / 2, factor=2.0, final_top1=0.91,
                  optimizer="sgd")
        write_run(study, "sgd_nesterov", batch, formula_steps(batch) / 4, factor=4.0, complete=False,
                  optimizer="sgd")  # still training: no final top-1, so no part in choosing
    points = study_points(study, 0.90, "sgd_nesterov")
    best = steps_by_batch(points)
    assert best == pytest.approx({1024: formula_steps(1024), 4096: formula_steps(4096)}, rel=0.01)
    assert {(p.batch_size, p.lr_factor) for p in points if p.used} == {(1024, 1.0), (4096, 1.0)}
    fastest = steps_by_batch(study_points(study, 0.90, "sgd_nesterov"), "fastest")
    assert fastest == pytest.approx({1024: formula_steps(1024) / 4, 4096: formula_steps(4096) / 4}, rel=0.01)


def test_a_hyphenated_variant_is_never_taken_for_its_prefix(tmp_path):
    study = tmp_path / "study"
    for batch in (1024, 4096):
        write_run(study, "lars", batch, formula_steps(batch))
        write_run(study, "lars-bias_excluded", batch, 3 * formula_steps(batch), optimizer="lars")
    lars = study_points(study, 0.90, "lars")
    assert {p.variant for p in lars} == {"lars"} and len(lars) == 2
    assert len(study_points(study, 0.90, "lars-bias_excluded")) == 2


def test_bounds_are_kept_out_of_the_fit_and_drawn(tmp_path, monkeypatch, capsys):
    study = tmp_path / "study"
    for batch in (256, 1024, 4096):
        write_run(study, "lars", batch, formula_steps(batch))
    # reached at its first evaluation (an upper bound) and never reached (a lower bound)
    write_run(study, "lars", 16384, 1.0, epochs=3)
    write_run(study, "lars", 65536, 1e9, epochs=3)
    points = study_points(study, 0.90, "lars")
    kinds = {p.batch_size: p.bound for p in points}
    assert kinds == {256: "", 1024: "", 4096: "", 16384: "upper", 65536: "lower"}
    assert set(steps_by_batch(points)) == {256, 1024, 4096}
    import matplotlib.figure
    figures = []
    original = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *args, **kwargs: figures.append(fig) or original(fig, *args, **kwargs))
    assert main(["critical-batch", str(study), "--target-top1", "0.9"]) == 0
    legend = [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()]
    assert any(t.startswith("upper bound") for t in legend) and any(t.startswith("lower bound") for t in legend)
    result = json.loads((study / "critical_batch.json").read_text())
    assert result["fit"]["batch_sizes"] == [256, 1024, 4096]


def test_a_damaged_run_is_skipped_with_a_warning_or_refused(study, capsys):
    (study / "lars-b1024-none-s0" / "metrics.jsonl").write_bytes(b'{"epoch": 1, "step": 5, "top1": 0.5}\n{"ep\n{}\n')
    assert main(["critical-batch", str(study), "--target-top1", "0.9"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "warning: skipped run" in captured.err and "line 2" in captured.err
    assert "lars-b1024" not in captured.out
    assert main(["critical-batch", str(study), "--target-top1", "0.9", "--strict"]) == 2
    assert "line 2 is not JSON" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--target-top1", "0"], "--target-top1: expected a fraction in (0, 1]"),
    (["--target-top1", "nan"], "--target-top1: expected a fraction in (0, 1]"),
    (["--target-top1", "inf"], "--target-top1: expected a fraction in (0, 1]"),
    (["--target-top1", "0.9", "--noise-scale", "inf"], "--noise-scale: expected a finite number > 0"),
    (["--target-top1", "0.9", "--noise-scale", "nan"], "--noise-scale: expected a finite number > 0"),
    (["--target-top1", "0.9", "--noise-scale", "0"], "--noise-scale: expected a finite number > 0"),
    (["--target-top1", "0.9", "--variant", "../x"], "--variant '../x': not a variant name"),
    (["--target-top1", "ninety"], "argument --target-top1: expected a number"),
    (["--target-top1", "0.9", "--augmentation", "wild"], "invalid choice: 'wild'"),
])
def test_every_argument_is_bounded(study, capsys, argv, message):
    try:
        code = main(["critical-batch", str(study), *argv])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_failure_leaves_the_earlier_outputs_whole(study, tmp_path, capsys):
    assert main(["critical-batch", str(study), "--target-top1", "0.9"]) == 0
    before = {name: (study / name).read_bytes() for name in ("critical_batch.json", "critical_batch.png")}
    damaged = write_run(tmp_path / "noise", "lars", 256, 700, noise=[None, 500.0, 900.0], epochs=3)
    (damaged / "metrics.jsonl").write_text('{"epoch": 1, "step": 1, "top1": 0.5, "grad_noise_scale": "big"}\n')
    assert main(["critical-batch", str(study), "--target-top1", "0.85", "--noise-run", str(damaged)]) == 2
    assert "grad_noise_scale is 'big'" in capsys.readouterr().err
    assert {name: (study / name).read_bytes() for name in before} == before


def results_rows(study: Path) -> list[dict]:
    """The results.json rows `largebatch report` writes for the complete runs of ``study``."""
    rows = []
    for run in sorted(p for p in study.iterdir() if (p / "summary.json").is_file()):
        summary = json.loads((run / "summary.json").read_text())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        variant, batch, _, seed = run.name.split("-")[:4]
        rows.append({"run": run.name, "variant": variant, "optimizer": variant, "batch_size": int(batch[1:]),
                     "augmentation": "none", "seed": int(seed[1:]), "lr_factor": 1.0, "lr": 1.0,
                     "diverged": False, "top1": summary["top1"], "epochs": summary["epochs"],
                     "steps": summary["steps"], "wall_s": 1.0,
                     "top1_by_epoch": [[r["epoch"], r["top1"]] for r in records],
                     "step_by_epoch": [[r["epoch"], r["step"]] for r in records]})
    return rows


def test_merged_rows_of_runs_done_elsewhere_give_the_same_fit(study, tmp_path, capsys):
    """The study's runs as results.json rows, with no run directory here: the same steps to the
    target and the same fit; rows written before step_by_epoch existed place each evaluation at
    epoch x steps / epochs and say so; a run directory wins over a row of the same name."""
    results = tmp_path / "results.json"
    results.write_text(json.dumps(results_rows(study)))
    assert main(["critical-batch", str(study), "--target-top1", "0.9", "--json"]) == 0
    here = json.loads(capsys.readouterr().out)
    elsewhere = tmp_path / "elsewhere"
    assert main(["critical-batch", str(elsewhere), "--target-top1", "0.9", "--merge", str(results), "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged["steps_by_batch"] == here["steps_by_batch"]
    assert merged["fit"]["critical_batch"] == here["fit"]["critical_batch"]

    old_rows = [{k: v for k, v in row.items() if k != "step_by_epoch"} for row in results_rows(study)]
    points = study_points(tmp_path / "nothing", 0.90, "lars", merge=[str(_write(tmp_path / "old.json", old_rows))])
    assert all("epoch x steps / epochs" in p.note for p in points)
    for batch, steps in steps_by_batch(points).items():
        assert steps == pytest.approx(formula_steps(batch), rel=0.02)

    shifted = [dict(row, step_by_epoch=[[e, s * 2] for e, s in row["step_by_epoch"]]) for row in results_rows(study)]
    both = study_points(study, 0.90, "lars", merge=[str(_write(tmp_path / "shifted.json", shifted))])
    assert steps_by_batch(both) == pytest.approx({int(b): s for b, s in here["steps_by_batch"].items()})


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows))
    return path


def test_with_min_top1_a_batch_whose_runs_did_not_train_has_no_best_factor():
    """Nesterov SGD at 16384: 20% and 33% top-1 where the larger factors diverged. Without the
    study's min_top1 the 33% run would stand for the batch size; with it, none does."""
    def point(factor, top1, diverged=False):
        return RunPoint(run=f"sgd-b16384-none-s0-lr{factor:g}", variant="sgd", batch_size=16384, seed=0,
                        lr_factor=factor, augmentation="none", complete=True, steps=None, examples=None,
                        epoch=None, top1=top1, diverged=diverged)
    points = [point(0.0625, 0.2045), point(0.125, 0.3274), point(0.25, None, True)]
    assert best_factors(points) == {16384: 0.125}
    assert best_factors(points, min_top1=0.5) == {16384: None}
    assert best_factors(points + [point(0.03125, 0.86)], min_top1=0.5) == {16384: 0.03125}
