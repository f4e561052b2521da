"""The report: gains over `none` with the spread over seeds, by hand; runs merged from an earlier
results.json."""

import json
import math

import pytest

from largebatch import report
from largebatch.errors import UserError


def row(batch, augmentation, seed, top1, variant="lars", epochs=20):
    return {"run": f"{variant}-b{batch}-{augmentation}-s{seed}", "variant": variant, "batch_size": batch,
            "optimizer": "lars", "augmentation": augmentation, "seed": seed, "lr": 1.0, "top1": top1,
            "top5": 1.0, "best_top1": top1, "epochs": epochs, "steps": 10, "wall_s": 60.0, "train_s": 50.0,
            "images_per_s": 1000.0, "final_train_loss": 0.1}


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
    monkeypatch.setattr(report, "collect_runs", lambda directory: ROWS)
    monkeypatch.setattr(report, "plot_top1_vs_epoch", lambda *args: None)
    path = report.write_report(str(tmp_path))
    assert "## Augmentation levels" in path.read_text()
    assert (tmp_path / "top1_vs_batch_augmentation.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(report, "collect_runs", lambda directory: [r for r in ROWS if r["augmentation"] == "none"])
    (tmp_path / "top1_vs_batch_augmentation.png").unlink()
    assert "## Augmentation levels" not in report.write_report(str(tmp_path)).read_text()
    assert not (tmp_path / "top1_vs_batch_augmentation.png").exists()


def write_run(directory, name, batch, top1_by_epoch, augmentation="none"):
    """A run directory as train.py leaves it: config.toml, summary.json, metrics.jsonl."""
    run = directory / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text(
        f'[optimizer]\nname = "lars"\nlr = 1.0\n[schedule]\nbase_batch_size = {batch}\nscaling = "none"\n'
        f'[data]\naugmentation = "{augmentation}"\n[run]\nseed = 0\n')
    (run / "summary.json").write_text(json.dumps({
        "global_batch_size": batch, "top1": top1_by_epoch[-1][1], "top5": 1.0, "best_top1": top1_by_epoch[-1][1],
        "epochs": len(top1_by_epoch), "steps": 10, "wall_time_s": 5.0, "train_time_s": 4.0, "images_per_s": 10.0}))
    lines = [{"kind": "step", "step": 1, "loss": 2.0}]
    lines += [{"kind": "epoch", "epoch": e, "train_loss": 1.0 / e, "top1": t} for e, t in top1_by_epoch]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_collect_runs_keeps_the_epoch_record(tmp_path):
    write_run(tmp_path, "lars-b128-none-s0", 128, [(1, 0.5), (2, 0.7)])
    (collected,) = report.collect_runs(tmp_path)
    assert collected["top1_by_epoch"] == [[1, 0.5], [2, 0.7]]
    assert collected["final_train_loss"] == 0.5 and collected["top1"] == 0.7


def test_merge_adds_missing_runs_and_the_run_directory_wins(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "lars-b128-none-s0", 128, [(1, 0.5), (2, 0.7)])
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
    again = report.merge_results(report.collect_runs(runs), report.load_results(out / "results.json"), "x")
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
    ('[{"run": "a", "batch_size": 128}]', "lacks variant, optimizer, augmentation, seed, top1, epochs, wall_s"),
])
def test_bad_results_file_names_the_file_and_the_fix(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        report.load_results(path)
    assert str(path) in str(error.value)
    with pytest.raises(UserError, match="no such results file"):
        report.load_results(tmp_path / "missing.json")


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
