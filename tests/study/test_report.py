"""The report: gains over `none` with the spread over seeds, by hand; runs merged from an earlier
results.json; LR sweeps; outputs written only when everything is computed."""

import json
import math

import pytest

from largebatch.errors import UserError
from largebatch.study import report
from largebatch.study.runs import collect_runs, load_results, merge_results


def row(batch, augmentation, seed, top1, variant="lars", epochs=20, lr_factor=1.0, diverged=False):
    suffix = f"-lr{lr_factor:g}" if lr_factor != 1.0 else ""
    return {"run": f"{variant}-b{batch}-{augmentation}-s{seed}{suffix}", "variant": variant, "batch_size": batch,
            "optimizer": "lars", "augmentation": augmentation, "seed": seed, "lr_factor": lr_factor,
            "lr": lr_factor, "top1": None if diverged else top1, "top5": 1.0, "best_top1": top1, "epochs": epochs,
            "steps": 10, "wall_s": 60.0, "train_s": 50.0, "images_per_s": 1000.0, "final_train_loss": 0.1,
            "diverged": diverged}


ROWS = [row(128, "none", 0, 0.90), row(128, "none", 1, 0.92),
        row(128, "extended", 0, 0.93), row(128, "extended", 1, 0.93),
        row(4096, "none", 0, 0.88),
        row(4096, "extended", 0, 0.90), row(4096, "minimal", 0, 0.87)]


def test_levels_are_ordered_as_documented():
    assert report.augmentation_levels(ROWS) == ["none", "minimal", "extended"]


def test_gains_by_hand():
    gains = {(g["batch_size"], g["augmentation"]): g for g in report.augmentation_gains(ROWS)}
    none128, extended128 = gains[(128, "none")], gains[(128, "extended")]
    assert none128["mean"] == pytest.approx(0.91) and none128["std"] == pytest.approx(math.sqrt(2e-4))
    assert extended128["seeds"] == [0, 1] and extended128["std"] == 0
    assert extended128["gain"] == pytest.approx(0.02)
    assert extended128["gain_std"] == pytest.approx(math.sqrt(2e-4))  # hypot(0, std of none)
    extended4096 = gains[(4096, "extended")]
    assert extended4096["gain"] == pytest.approx(0.02) and extended4096["gain_std"] is None  # one seed each
    assert extended4096["vs_smallest"] == pytest.approx(0.90 - 0.93)
    assert gains[(4096, "minimal")]["gain"] == pytest.approx(-0.01)
    assert gains[(4096, "minimal")]["vs_smallest"] is None  # no minimal run at 128


def test_tables_show_mean_spread_and_gain():
    text = report.augmentation_tables(ROWS)
    assert "| batch | none | minimal | extended |" in text
    assert "| 128 | 91.00 ± 1.41 (n=2) | - | 93.00 ± 0.00 (n=2) |" in text
    assert "| 128 | reference | - | +2.00 ± 1.41 |" in text
    assert "| 4096 | reference | -1.00 | +2.00 |" in text
    assert "| 4096 | -3.00 | - | -3.00 |" in text  # change from batch 128, same level


def test_report_adds_the_augmentation_section_only_with_several_levels(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "collect_runs", lambda directory, strict: (ROWS, []))
    monkeypatch.setattr(report, "plot_top1_vs_epoch", lambda *args: None)
    path = report.write_report(str(tmp_path))
    assert "## Augmentation levels" in path.read_text()
    assert (tmp_path / "top1_vs_batch_augmentation.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(report, "collect_runs",
                        lambda directory, strict: ([r for r in ROWS if r["augmentation"] == "none"], []))
    (tmp_path / "top1_vs_batch_augmentation.png").unlink()
    assert "## Augmentation levels" not in report.write_report(str(tmp_path)).read_text()
    assert not (tmp_path / "top1_vs_batch_augmentation.png").exists()


def test_collect_runs_keeps_the_epoch_record(tmp_path, make_run):
    make_run(tmp_path, "lars-b128-none-s0", 128, [(1, 0.5), (2, 0.7)])
    (collected,), _ = collect_runs(tmp_path)
    assert collected["top1_by_epoch"] == [[1, 0.5], [2, 0.7]]
    assert collected["final_train_loss"] == 0.5 and collected["top1"] == 0.7


def test_merge_adds_missing_runs_and_the_run_directory_wins(tmp_path, make_run):
    runs = tmp_path / "runs"
    make_run(runs, "lars-b128-none-s0", 128, [(1, 0.5), (2, 0.7)])
    earlier = tmp_path / "earlier.json"
    # The earlier report had b128 (now rerun: 0.7 replaces 0.6) and b4096 (only here).
    old128 = {**row(128, "none", 0, 0.60), "run": "lars-b128-none-s0"}
    old4096 = row(4096, "none", 0, 0.55)
    earlier.write_text(json.dumps([old128, old4096]))
    out = tmp_path / "out"
    text = report.write_report(str(runs), str(out), [str(earlier)]).read_text()
    rows = json.loads((out / "results.json").read_text())
    assert [(r["batch_size"], r["top1"], r.get("source")) for r in rows] == [(128, 0.7, None), (4096, 0.55, str(earlier))]
    assert f"1 of the 2 runs come from {earlier}" in text and "1 of them have no per-epoch record" in text
    assert (out / "top1_vs_epoch.png").read_bytes()[:4] == b"\x89PNG"
    # Merging the written results.json again gives the same rows: merged rows keep their source.
    again = merge_results(collect_runs(runs)[0], load_results(out / "results.json")[0], "x")
    assert [(r["top1"], r.get("source")) for r in again] == [(0.7, None), (0.55, str(earlier))]


def test_merge_alone_needs_no_run_directory(tmp_path):
    earlier = tmp_path / "results.json"
    earlier.write_text(json.dumps(ROWS))
    text = report.write_report(str(tmp_path / "nothing"), str(tmp_path / "out"), [str(earlier)]).read_text()
    assert "7 of the 7 runs come from" in text and "## Augmentation levels" in text
    assert not (tmp_path / "out" / "top1_vs_epoch.png").exists()  # no run has a per-epoch record


@pytest.mark.parametrize("content, message", [
    ("{not json", "not JSON"),
    ('{"run": "a"}', "expected a JSON list"),
])
def test_bad_results_file_names_the_file_and_the_fix(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        load_results(path)
    assert str(path) in str(error.value)
    with pytest.raises(UserError, match="no such results file"):
        load_results(tmp_path / "missing.json")


def test_epoch_line_labels_name_every_batch_once_when_the_lowest_seed_is_missing():
    # merged runs: seed 0 of batch 128 has no epoch record, so the panel holds only seeds 1 and 2;
    # every batch size must still get exactly one legend entry
    rows = [{"batch_size": 128, "seed": 1}, {"batch_size": 4096, "seed": 2},
            {"batch_size": 128, "seed": 2}, {"batch_size": 16384, "seed": 0, "diverged": True}]
    labels = report.epoch_line_labels(rows)
    assert labels == ["B=128, 2 seeds", "B=4096", None, "B=16384 (diverged)"]


def test_log2_limits_keep_the_end_points_inside_the_frame():
    low, high = report.log2_limits([16384])
    assert low < 16384 < high
    low, high = report.log2_limits([128, 1024, 16384])
    assert low < 128 and high > 16384


# --- LR sweeps ---------------------------------------------------------------------------------

SWEEP = [row(4096, "none", 0, t, "lars", lr_factor=f, diverged=t is None)
         for f, t in [(0.5, 0.900), (1.0, 0.910), (2.0, 0.908), (4.0, None)]]
SWEEP += [row(4096, "none", s, t, "lars", lr_factor=1.0) for s, t in [(1, 0.914), (2, 0.906)]]
SWEEP += [row(4096, "none", 0, t, "sgd", lr_factor=f, diverged=t is None)
          for f, t in [(0.25, 0.89), (0.5, 0.88), (1.0, None)]]
SWEEP += [row(16384, "none", 0, None, "sgd", lr_factor=f, diverged=True) for f in (0.5, 1.0)]


def test_sweep_section_names_best_factor_spread_and_range(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "collect_runs", lambda directory, strict: (SWEEP, []))
    text = report.write_report(str(tmp_path)).read_text()
    assert "## LR sweeps" in text
    # lars at 4096: best x1 (0.910 over seed 0), top-1 over seeds 0-2 = 91.00 ± 0.40; x2 within 0.5 point
    assert "| lars | 4096 | x0.5 - x4 (4) | x4 | x1 | 1 | 91.00 ± 0.40 (n=3) | x1 - x2 | 1 |" in text
    # sgd at 4096: the best is the smallest factor (an edge), its range reaches the end: a lower bound
    assert "| sgd | 4096 | x0.25 - x1 (3) | x1 | x0.25 (edge) | 0.25 | 89.00 (n=1) | x0.25 - x0.25 | ≥ 0 |" in text
    assert "| sgd | 16384 | x0.5 - x1 (2) | x0.5, x1 | - | - | failed at every factor | - | none (all failed) |" in text
    assert "| 4096 | 91.00 ± 0.40 (n=3) | 89.00 (n=1) |" in text
    assert "| 4096 | 1 | ≥ 0 |" in text and "| 16384 | - | none (all failed) |" in text
    for name in ("sweep_b4096.png", "sweep_b16384.png", "top1_vs_batch.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    cells = {(c["variant"], c["batch_size"]): c for c in json.loads((tmp_path / "sweeps.json").read_text())}
    assert cells[("lars", 4096)]["width_log2"] == 1.0 and cells[("lars", 4096)]["best_factor"] == 1.0
    assert cells[("sgd", 4096)]["best_at_edge"] and cells[("sgd", 16384)]["best_factor"] is None


def test_range_reaching_the_end_of_the_sweep_is_a_lower_bound():
    rows = [row(4096, "none", 0, t, lr_factor=f) for f, t in [(0.5, 0.909), (1.0, 0.910), (2.0, 0.80)]]
    cells = report.analyse_cells(rows)
    assert "| x0.5 - x1 | ≥ 1 |" in report.sweep_tables(cells)


def test_the_batch_plot_uses_each_cells_best_factor(monkeypatch):
    cells = report.analyse_cells(SWEEP)
    best = report.best_factor_rows(cells)
    assert sorted((r["variant"], r["batch_size"], r["lr_factor"], r["seed"]) for r in best) == [
        ("lars", 4096, 1.0, 0), ("lars", 4096, 1.0, 1), ("lars", 4096, 1.0, 2),
        ("sgd", 4096, 0.25, 0), ("sgd", 16384, 0.5, 0), ("sgd", 16384, 1.0, 0)]


# --- issue-20 fixes: the optimizer column, markers ------------------------------------------------

def test_a_one_run_report_names_the_optimizer_not_the_recipe(tmp_path, make_run):
    run = make_run(tmp_path, "fashion_mnist-b4096-lars-s0", 4096, optimizer="sgd", lr=0.5)
    text = report.write_report(str(run)).read_text()
    assert "| batch | optimizer | augmentation | seed | peak LR |" in text
    assert "| 4096 | sgd | none | 0 | 0.5 | 70.00% |" in text and "fashion_mnist" not in text.split("\n", 1)[1]


def test_the_epoch_plot_marks_every_evaluation(monkeypatch):
    figures = []
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or b"png")
    one_epoch = {**row(4096, "none", 0, 0.7), "top1_by_epoch": [[1, 0.7]]}
    assert report.plot_top1_vs_epoch([one_epoch]) == b"png"
    (line,) = figures[0].axes[0].lines
    assert line.get_marker() == "o" and list(line.get_xdata()) == [1]


# --- writing: all or nothing, into a folder of our own -------------------------------------------

def test_a_failure_leaves_the_previous_report_whole(tmp_path, make_run, monkeypatch):
    make_run(tmp_path, "lars-b128-none-s0", 128)
    report.write_report(str(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {"report.md", "results.json", "top1_vs_batch.png", "top1_vs_epoch.png"} <= set(before)
    make_run(tmp_path, "lars-b256-none-s0", 256)

    def fail(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report, "plot_top1_vs_epoch", fail)  # the second-to-last output computed
    with pytest.raises(RuntimeError):
        report.write_report(str(tmp_path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_damaged_runs_are_warned_about_and_strict_refuses(tmp_path, make_run, cli_main):
    make_run(tmp_path, "lars-b128-none-s0", 128)
    (make_run(tmp_path, "lars-b256-none-s0", 256) / "summary.json").write_text('{"top1": 0.')
    code, out, err = cli_main(["report", str(tmp_path)])
    assert code == 0 and "| 128 | lars |" in out and "| 256 |" not in out
    assert err.count("\n") == 1 and err.startswith("largebatch: warning: skipped run") and "lars-b256" in err
    before = (tmp_path / "report.md").read_bytes()
    code, out, err = cli_main(["report", str(tmp_path), "--strict"])
    assert code == 2 and err.count("\n") == 1 and "summary.json: not JSON" in err
    assert (tmp_path / "report.md").read_bytes() == before


def test_out_that_belongs_to_something_else_is_refused(tmp_path, make_run, cli_main):
    study = tmp_path / "study"
    make_run(study, "lars-b128-none-s0", 128)
    other_run = make_run(tmp_path / "other", "lars-b256-none-s0", 256)
    (tmp_path / "file").write_text("x")
    for out, message in [(other_run, "is a run directory (it holds config.toml)"),
                         (tmp_path / "other", "holds the run directory lars-b256-none-s0"),
                         (tmp_path / "file", "is a file")]:
        code, _, err = cli_main(["report", str(study), "--out", str(out)])
        assert code == 2 and message in err and err.count("\n") == 1
    assert not (other_run / "report.md").exists()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "README.md").write_text("notes")
    assert cli_main(["report", str(study), "--out", str(docs)])[0] == 0  # a folder of other files is fine
    assert (docs / "README.md").read_text() == "notes" and (docs / "report.md").is_file()


def test_an_output_folder_in_use_is_refused_and_left_alone(tmp_path, make_run, cli_main):
    from largebatch import rundir
    make_run(tmp_path, "lars-b128-none-s0", 128)
    assert cli_main(["report", str(tmp_path)])[0] == 0
    before = (tmp_path / "report.md").read_bytes()
    (tmp_path / rundir.LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "another-host", "job": "other"}))
    make_run(tmp_path, "lars-b256-none-s0", 256)
    code, _, err = cli_main(["report", str(tmp_path)])
    assert code == 2 and "in use by process 4242 on another-host" in err and err.count("\n") == 1
    assert (tmp_path / "report.md").read_bytes() == before
    (tmp_path / rundir.LOCK_NAME).unlink()
    assert cli_main(["report", str(tmp_path)])[0] == 0 and not (tmp_path / rundir.LOCK_NAME).exists()
