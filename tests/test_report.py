"""The augmentation part of the report: gains over `none` with the spread over seeds, by hand."""

import math

import pytest

from largebatch import report


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
