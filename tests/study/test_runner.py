"""Running a study: the grid, widened LR sweeps and extra seeds decided from results (a fake
engine writes the results, so the order of work is checked in milliseconds), signals, --set, the
study directory, and a few real tiny runs."""

import json
import math
from pathlib import Path

import pytest

from largebatch import rundir
from largebatch.cli import main
from largebatch.errors import ConfigError, Interrupted
from largebatch.study import load_study, runner
from largebatch.study.names import parse_run_name
from largebatch.train import DivergenceError

STUDY = """
[study]
base = "fashion_mnist"
batch_sizes = [64, 256]
epochs = 1
seeds = [0]

[variants.sgd]
optimizer = {{ name = "sgd", lr = 0.05 }}
schedule = {{ scaling = "linear", base_batch_size = 64, warmup_epochs = 0.5 }}
run = {{ micro_batch_size = 64, threads = 1 }}
data = {{ data_dir = "{data}" }}

[variants.lars]
optimizer = {{ name = "lars", lr = 2.0 }}
schedule = {{ scaling = "sqrt", base_batch_size = 256, warmup_epochs = 0.5 }}
run = {{ micro_batch_size = 64, threads = 1 }}
data = {{ data_dir = "{data}" }}
"""

SWEEP = """
[study]
batch_sizes = [4096]
epochs = 1
seeds = [0]
lr_factors = [0.5, 1.0, 2.0]
widen_limit = 3
best_seeds = [1, 2]
[variants.up]
optimizer = { name = "lars", lr = 1.0 }
[variants.down]
optimizer = { name = "sgd", lr = 1.0 }
[variants.never]
optimizer = { name = "lamb", lr = 1.0 }
"""


def synthetic_top1(variant: str, factor: float) -> float | None:
    """The synthetic sweep: `up` peaks at x8, `down` diverges from x1 and is best at x0.5,
    `never` diverges at every factor (None: diverged)."""
    if variant == "up":
        return 0.90 - 0.01 * abs(math.log2(factor) - 3)
    if variant == "down":
        return None if factor >= 1 else 0.88 - 0.02 * abs(math.log2(factor / 0.5))
    return None


@pytest.fixture
def fake_engine(monkeypatch, make_run):
    """Replace training by writing the run directory the engine would leave; returns the list of
    (run name, config) trained, in order. ``fake_engine.stop_at``: a run name at which a signal
    "arrives" (``Interrupted``), or ``fake_engine.old_stop``: the old engine's return instead."""
    trained = []

    def train_run(config):
        out = Path(config.run.out)
        rundir.check_start(out, "auto", False)  # as the engine does first
        trained.append((out.name, config))
        if out.name == getattr(train_run, "stop_at", None):
            if getattr(train_run, "old_stop", False):
                return {"stopped_at_step": 7}
            raise Interrupted(f"run {out.name} stopped by signal 15 at step 7; checkpoint saved", 15)
        point = parse_run_name(out.name)
        top1 = synthetic_top1(point.variant, point.lr_factor)
        make_run(out.parent, out.name, config.run.batch_size, ((1, 0.1 if top1 is None else top1),),
                 optimizer=config.optimizer.name, lr=config.optimizer.lr, seed=config.run.seed,
                 complete=top1 is not None)
        if top1 is None:
            raise DivergenceError("loss became nan at step 3", step=3, lr=config.optimizer.lr, epoch=0.5)
        return {"top1": top1}

    train_run.trained = trained
    monkeypatch.setattr(runner, "train_run", train_run)
    return train_run


def sweep_study(tmp_path, text=SWEEP):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return load_study(str(path), out=str(tmp_path / "out"))


WIDENED_AND_SEEDS = [
    # up: best at the top edge x2 -> x4 -> x8 -> x16 (worse: x8 is interior)
    "up-b4096-none-s0-lr4", "up-b4096-none-s0-lr8", "up-b4096-none-s0-lr16",
    # down: x1, x2 diverged, best x0.5 at the bottom edge -> x0.25 (worse)
    "down-b4096-none-s0-lr0.25",
    # never: every factor diverged -> down three factors (widen_limit), then it stops
    "never-b4096-none-s0-lr0.25", "never-b4096-none-s0-lr0.125", "never-b4096-none-s0-lr0.0625",
    # then seeds 1 and 2 at each best factor; none for a cell that diverged everywhere
    "up-b4096-none-s1-lr8", "up-b4096-none-s2-lr8", "down-b4096-none-s1-lr0.5", "down-b4096-none-s2-lr0.5"]


def test_sweep_widens_each_cell_until_its_best_is_interior_then_adds_seeds(tmp_path, fake_engine, capsys):
    study = sweep_study(tmp_path)
    runner.run_study(study)
    names = [name for name, _ in fake_engine.trained]
    grid = [r.name for r in study.runs]
    assert names == grid + WIDENED_AND_SEEDS  # the grid first, in order
    assert "never at batch 4096 (none): the best factor is still at an edge" not in capsys.readouterr().out
    summary = json.loads((study.out / "never-b4096-none-s0-lr0.0625" / "summary.json").read_text())
    assert summary["diverged"] and summary["diverged_at_step"] == 3 and summary["top1"] is None
    # the LR of a widened run is the variant's times the factor, validated like the grid's
    configs = dict(fake_engine.trained)
    assert configs["up-b4096-none-s0-lr16"].optimizer.lr == 16.0
    assert (study.out / "study.toml").read_text() == (tmp_path / "sweep.toml").read_text()


def test_the_widening_limit_is_reported(tmp_path, fake_engine, capsys):
    runner.run_study(sweep_study(tmp_path, SWEEP.replace("widen_limit = 3", "widen_limit = 1")))
    names = [name for name, _ in fake_engine.trained]
    assert "up-b4096-none-s0-lr4" in names and "up-b4096-none-s0-lr8" not in names
    assert "up-b4096-none-s1-lr4" in names  # the seeds go to the best found within the limit
    assert "up at batch 4096 (none): the best factor is still at an edge after widen_limit (1)" in capsys.readouterr().out


def test_runs_done_elsewhere_count_and_a_second_invocation_redoes_nothing(tmp_path, fake_engine, make_run, capsys):
    study = sweep_study(tmp_path)
    # runs copied in from another machine (or left by the engine before this runner): same names
    make_run(study.out, "up-b4096-none-s0-lr1", 4096, ((1, synthetic_top1("up", 1.0)),), lr=1.0)
    make_run(study.out, "up-b4096-none-s0-lr4", 4096, ((1, synthetic_top1("up", 4.0)),), lr=4.0)
    runner.run_study(study)
    names = [name for name, _ in fake_engine.trained]
    assert "up-b4096-none-s0-lr1" not in names and "up-b4096-none-s0-lr4" not in names
    assert "up-b4096-none-s0-lr8" in names
    capsys.readouterr()
    from largebatch.study.report import write_report
    write_report(str(study.out))  # a report in the study directory (sweeps.json, sweep plots) is the study's
    fake_engine.trained.clear()
    runner.run_study(study)
    assert fake_engine.trained == []
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == len(study.runs) + len(WIDENED_AND_SEEDS)


def test_only_selects_runs_and_a_cell_waits_for_runs_it_did_not_select(tmp_path, fake_engine, capsys):
    study = sweep_study(tmp_path)
    runner.run_study(study, only="up-")
    names = [name for name, _ in fake_engine.trained]
    assert all(name.startswith("up-") for name in names) and "up-b4096-none-s2-lr8" in names
    out = capsys.readouterr().out
    assert "down at batch 4096 (none): waiting for down-b4096-none-s0-lr0.5 (not complete)" in out
    fake_engine.trained.clear()
    runner.run_study(study, only="-lr1")  # a grid point and its widening only
    assert [name for name, _ in fake_engine.trained] == ["down-b4096-none-s0-lr1", "never-b4096-none-s0-lr1"]


def test_dry_run_lists_the_next_widening_from_the_results_there(tmp_path, fake_engine, capsys):
    study = sweep_study(tmp_path)
    runner.run_study(study, only="up-b4096-none-s0-lr0.5")
    runner.run_study(study, only="up-b4096-none-s0-lr1")
    runner.run_study(study, only="up-b4096-none-s0-lr2")
    capsys.readouterr()
    fake_engine.trained.clear()
    runner.run_study(study, dry_run=True, only="up-")
    out = capsys.readouterr().out
    assert fake_engine.trained == [] and not (study.out / "up-b4096-none-s0-lr4").exists()
    assert "up-b4096-none-s0-lr4 (widening: the best factor x2 is the largest swept): would run" in out


def test_a_signal_stops_the_study_with_a_nonzero_status(tmp_path, fake_engine, capsys):
    study = sweep_study(tmp_path)
    fake_engine.stop_at = study.runs[1].name
    with pytest.raises(Interrupted) as error:
        runner.run_study(study)
    assert error.value.exit_code == 128 + 15
    assert [name for name, _ in fake_engine.trained] == [r.name for r in study.runs[:2]]
    # through the command: no traceback, not 0, and nothing after the stopped run
    fake_engine.trained.clear()
    assert main(["study", str(study.path), "--out", str(study.out), "--no-report"]) == 128 + 15
    err = capsys.readouterr().err
    assert "stopped by signal 15" in err and err.count("\n") == 1
    assert [name for name, _ in fake_engine.trained] == [study.runs[1].name]


def test_an_engine_that_returns_on_a_signal_stops_the_study_too(tmp_path, fake_engine):
    study = sweep_study(tmp_path)
    fake_engine.stop_at, fake_engine.old_stop = study.runs[0].name, True
    with pytest.raises(Interrupted, match="stopped by a signal at step 7"):
        runner.run_study(study)
    assert len(fake_engine.trained) == 1


def test_set_applies_to_the_selected_runs_only(tmp_path, fake_engine, capsys):
    study = sweep_study(tmp_path)
    assert main(["study", str(study.path), "--out", str(study.out), "--only", "up-b4096-none-s0-lr1",
                 "--set", "run.noise_scale=true", "--set", "run.log_every=5", "--no-report"]) == 0
    (name, config), = fake_engine.trained
    assert name == "up-b4096-none-s0-lr1" and config.run.noise_scale and config.run.log_every == 5
    fake_engine.trained.clear()
    runner.run_study(study, only="up-b4096-none-s0-lr2")
    assert not fake_engine.trained[0][1].run.noise_scale
    capsys.readouterr()
    assert main(["study", str(study.path), "--out", str(study.out), "--set", "run.batch_size=8"]) == 2
    assert "the study's grid sets this key" in capsys.readouterr().err
    # a value valid alone but not with a run's other keys is refused before anything runs
    fake_engine.trained.clear()
    assert main(["study", str(study.path), "--out", str(study.out), "--set", "run.micro_batch_size=8192"]) == 2
    err = capsys.readouterr().err
    assert "run up-b4096-none-s0-lr0.5: run.micro_batch_size (8192) is larger than run.batch_size" in err
    assert fake_engine.trained == []


def test_a_study_directory_that_belongs_to_something_else_is_refused(tmp_path, fake_engine, make_run):
    study = sweep_study(tmp_path)
    study.out.mkdir()
    (study.out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds 'notes.txt', which no study writes"):
        runner.run_study(study)
    run = make_run(tmp_path, "some-run", 128)
    with pytest.raises(ConfigError, match="is a run directory"):
        runner.run_study(load_study(str(study.path), out=str(run)))
    assert fake_engine.trained == []


def lock_elsewhere(directory: Path) -> None:
    """A lock held by a process on another machine (so never taken for stale)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / rundir.LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "another-host", "job": "job-7@elsewhere",
                                                          "started": "2026-12-02T06:00:00+00:00"}))


def test_a_run_another_process_is_training_is_left_to_it(tmp_path, fake_engine, capsys):
    study = sweep_study(tmp_path)
    lock_elsewhere(study.out / "down-b4096-none-s0-lr1")
    runner.run_study(study)
    out = capsys.readouterr().out
    assert "down-b4096-none-s0-lr1: skipped: --out" in out and "in use by process 4242 on another-host" in out
    names = [name for name, _ in fake_engine.trained]
    assert "down-b4096-none-s0-lr1" not in names and "up-b4096-none-s0-lr8" in names
    assert "down at batch 4096 (none): waiting for down-b4096-none-s0-lr1 (not complete)" in out


def test_a_study_directory_in_use_is_refused(tmp_path, fake_engine):
    study = sweep_study(tmp_path)
    lock_elsewhere(study.out)
    with pytest.raises(rundir.RunDirectoryError, match="in use by process 4242 on another-host"):
        runner.run_study(study)
    assert fake_engine.trained == [] and not (study.out / "study.toml").exists()
    assert "another-host" in (study.out / rundir.LOCK_NAME).read_text()  # the owner's lock is left as it was


def test_a_run_stopped_before_its_first_checkpoint_is_trained_again(tmp_path, fake_engine, make_run):
    study = sweep_study(tmp_path)
    make_run(study.out, "up-b4096-none-s0-lr0.5", 4096, complete=False)  # killed before its first checkpoint
    runner.run_study(study, only="up-b4096-none-s0-lr0.5")
    assert [name for name, _ in fake_engine.trained] == ["up-b4096-none-s0-lr0.5"]


def test_a_run_directory_that_holds_something_else_stops_the_study_naming_it(tmp_path, fake_engine):
    study = sweep_study(tmp_path)
    run = study.out / "up-b4096-none-s0-lr0.5"
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("not a run")
    with pytest.raises(ConfigError, match=f"study run up-b4096-none-s0-lr0.5: .*holds no run of ours.* delete "
                                          f"{run}"):
        runner.run_study(study)


def test_a_damaged_result_holds_the_cell_back_with_one_line(tmp_path, fake_engine, capsys):
    study = sweep_study(tmp_path)
    runner.run_study(study, only="up-b4096-none-s0-lr")  # the grid of `up`, widened
    (study.out / "up-b4096-none-s0-lr1" / "summary.json").write_text("{")
    fake_engine.trained.clear()
    capsys.readouterr()
    runner.run_study(study, only="up-")
    out = capsys.readouterr().out
    assert "up at batch 4096 (none): cannot decide more runs:" in out and "summary.json: not JSON" in out
    assert fake_engine.trained == []


def test_a_diverging_run_is_recorded_and_the_study_goes_on(tiny_data, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(f"""
[study]
batch_sizes = [128]
epochs = 1
[variants.sgd]
optimizer = {{ name = "sgd", lr = 1e30 }}
run = {{ micro_batch_size = 64, threads = 1 }}
data = {{ data_dir = "{tiny_data}" }}
[variants.lars]
optimizer = {{ name = "lars", lr = 2.0 }}
schedule = {{ warmup_epochs = 0.5 }}
run = {{ micro_batch_size = 64, threads = 1 }}
data = {{ data_dir = "{tiny_data}" }}
""")
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    rows = {r["optimizer"]: r for r in json.loads((out / "results.json").read_text())}
    assert rows["sgd"]["diverged"] and rows["sgd"]["top1"] is None
    assert not rows["lars"]["diverged"] and 0 <= rows["lars"]["top1"] <= 1
    assert "| diverged |" in (out / "report.md").read_text()


def test_the_engine_leaves_a_run_another_process_trains_to_it(tiny_data, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(f"""
[study]
batch_sizes = [128]
epochs = 1
seeds = [0, 1]
[variants.lars]
optimizer = {{ name = "lars", lr = 2.0 }}
schedule = {{ warmup_epochs = 0.5 }}
run = {{ micro_batch_size = 64, threads = 1 }}
data = {{ data_dir = "{tiny_data}", workers = 0 }}
""")
    out = tmp_path / "out"
    lock_elsewhere(out / "lars-b128-none-s0")
    assert main(["study", str(path), "--out", str(out), "--no-report"]) == 0
    assert "[1] lars-b128-none-s0: skipped: --out" in capsys.readouterr().out
    assert (out / "lars-b128-none-s1" / "summary.json").is_file()
    assert sorted(p.name for p in (out / "lars-b128-none-s0").iterdir()) == [rundir.LOCK_NAME]


@pytest.mark.slow
def test_mini_study_runs_resumes_and_reports(tiny_data, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(STUDY.format(data=tiny_data))
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 4
    assert {(r["batch_size"], r["optimizer"]) for r in rows} == {(64, "sgd"), (256, "sgd"), (64, "lars"),
                                                                 (256, "lars")}
    for row in rows:
        assert 0 <= row["top1"] <= 1 and row["epochs"] == 1 and row["wall_s"] > 0
    report = (out / "report.md").read_text()
    assert report.count("\n| ") >= 5  # header + 4 rows
    for png in ("top1_vs_batch.png", "top1_vs_epoch.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["study", str(path), "--out", str(out)]) == 0  # second time: everything skipped
    assert capsys.readouterr().out.count("complete, skipped") == 4


@pytest.mark.slow
def test_mini_tuned_sweep_end_to_end(tiny_data, tmp_path, capsys):
    """A real LR sweep on the tiny data: two optimizers, three factors four apart, widened (at most
    one factor beyond each end, four apart again), then one extra seed at each best factor; the
    report's sweep section, plot and results.json; critical-batch on the best-factor runs."""
    path = tmp_path / "tuned.toml"
    path.write_text(f"""
[study]
batch_sizes = [64, 128]
epochs = 2
seeds = [0]
lr_factors = [0.25, 1.0, 4.0]
widen_limit = 1
best_seeds = [1]
[variants.sgd_nesterov]
optimizer = {{ name = "sgd", lr = 0.05, nesterov = true }}
schedule = {{ scaling = "linear", base_batch_size = 64, warmup_epochs = 0.5 }}
run = {{ micro_batch_size = 64, threads = 1 }}
data = {{ data_dir = "{tiny_data}", train_subset = 256, workers = 0 }}
[variants.lars]
optimizer = {{ name = "lars", lr = 2.0 }}
schedule = {{ scaling = "sqrt", base_batch_size = 128, warmup_epochs = 0.5 }}
run = {{ micro_batch_size = 64, threads = 1 }}
data = {{ data_dir = "{tiny_data}", train_subset = 256, workers = 0 }}
""")
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    keys = {"optimizer", "variant", "batch_size", "lr_factor", "lr", "seed", "top1", "epochs", "steps", "diverged",
            "wall_s"}
    assert all(keys <= set(r) for r in rows)
    sweeps = {(c["variant"], c["batch_size"]): c for c in json.loads((out / "sweeps.json").read_text())}
    assert set(sweeps) == {(v, b) for v in ("sgd_nesterov", "lars") for b in (64, 128)}
    for (variant, batch), cell in sweeps.items():
        factors = [p["lr_factor"] for p in cell["curve"]]
        assert {0.25, 1.0, 4.0} <= set(factors) and min(factors) >= 0.0625 and max(factors) <= 16.0
        best = cell["best_factor"]
        if best is None:
            continue
        # the best is interior, or the sweep went as far as widen_limit allows on that side
        assert best not in (factors[0], factors[-1]) or factors[0] == 0.0625 or factors[-1] == 16.0
        seeds = sorted(r["seed"] for r in rows if (r["variant"], r["batch_size"], r["lr_factor"]) == (variant, batch, best))
        assert seeds == [0, 1]
        assert cell["best_seeds"] + cell["best_diverged"] == 2
    text = (out / "report.md").read_text()
    assert "## LR sweeps" in text and "**Good-LR range width" in text
    for batch in (64, 128):
        assert (out / f"sweep_b{batch}.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    code = main(["critical-batch", str(out), "--variant", "lars", "--target-top1", "0.2"])
    captured = capsys.readouterr()
    assert code in (0, 2) and "Traceback" not in captured.err
    if code == 0:
        result = json.loads((out / "critical_batch.json").read_text())
        used = {(p["batch_size"], p["lr_factor"]) for p in result["points"] if p["used"]}
        assert used <= {(b, sweeps[("lars", b)]["best_factor"]) for b in (64, 128)}
    else:
        assert captured.err.count("\n") == 1


def test_merged_results_of_another_machine_count_as_done_and_decide_the_widening(tmp_path, fake_engine, capsys):
    """The whole study ran elsewhere: with its results.json merged, a fresh study directory trains
    nothing; without the rows of one cell's widened runs, exactly those are trained again, and the
    extra seeds still go to that cell's best."""
    from largebatch.study.report import write_report

    elsewhere = sweep_study(tmp_path)
    runner.run_study(elsewhere)
    write_report(str(elsewhere.out), str(tmp_path / "report"))
    results = tmp_path / "report" / "results.json"
    rows = json.loads(results.read_text())
    fake_engine.trained.clear()

    here = load_study(str(tmp_path / "sweep.toml"), out=str(tmp_path / "here"))
    runner.run_study(here, merge=[str(results)])
    assert fake_engine.trained == []
    assert f"merged {len(rows)} run(s) of this study from {results}" in capsys.readouterr().out

    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps([r for r in rows if not r["run"].startswith("up-b4096-none-s0-lr") or
                                   r["lr_factor"] <= 2]))
    runner.run_study(load_study(str(tmp_path / "sweep.toml"), out=str(tmp_path / "again")), merge=[str(partial)])
    assert [name for name, _ in fake_engine.trained] == ["up-b4096-none-s0-lr4", "up-b4096-none-s0-lr8",
                                                         "up-b4096-none-s0-lr16"]


def test_a_merged_row_of_another_experiment_under_a_run_name_is_refused(tmp_path, fake_engine):
    elsewhere = sweep_study(tmp_path)
    runner.run_study(elsewhere, only="up-b4096-none-s0-lr1")
    from largebatch.study.report import write_report
    write_report(str(elsewhere.out), str(tmp_path / "report"))
    rows = json.loads((tmp_path / "report" / "results.json").read_text())
    rows[0]["epochs"] = 90
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows))
    fake_engine.trained.clear()
    with pytest.raises(ConfigError, match=r"bad.json: run up-b4096-none-s0-lr1 differs from this study's run of "
                                          r"that name in epochs"):
        runner.run_study(load_study(str(tmp_path / "sweep.toml"), out=str(tmp_path / "here")), merge=[str(bad)])
    assert fake_engine.trained == []
