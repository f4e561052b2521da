"""Reading run directories: every file checked, a damaged run named in one line and skipped."""

import json

import pytest

from largebatch.study.runs import DamagedRun, collect_runs, load_results, read_run


def test_a_study_run_reads_back_its_grid_point(tmp_path, make_run):
    run = make_run(tmp_path, "lars-b128-none-s0-lr0.5", 128, lr=0.5)
    files = read_run(run)
    assert files.variant == "lars" and files.lr_factor == 0.5 and files.summary["top1"] == 0.7
    (row,), warnings = collect_runs(tmp_path)
    assert not warnings
    assert row["variant"] == "lars" and row["lr_factor"] == 0.5 and row["lr"] == pytest.approx(0.5)
    assert row["top1_by_epoch"] == [[1, 0.5], [2, 0.7]] and row["final_train_loss"] == 0.5
    assert {"optimizer", "batch_size", "lr_factor", "lr", "seed", "top1", "epochs", "steps", "diverged",
            "wall_s"} <= set(row)


def test_a_plain_run_is_labelled_by_nothing_but_its_optimizer(tmp_path, make_run):
    make_run(tmp_path, "fashion_mnist-b4096-lars-s0", 4096, optimizer="sgd")
    (row,), _ = collect_runs(tmp_path)
    assert row["variant"] is None and row["optimizer"] == "sgd" and row["lr_factor"] == 1.0


def test_a_hyphenated_variant_is_not_grouped_with_its_prefix(tmp_path, make_run):
    make_run(tmp_path, "lars-b4096-none-s0", 4096)
    make_run(tmp_path, "lars-bias_excluded-b4096-none-s0", 4096)
    rows, _ = collect_runs(tmp_path)
    assert sorted(r["variant"] for r in rows) == ["lars", "lars-bias_excluded"]


DAMAGE = [
    ("summary.json", b'{"global_batch_size": 128, "top1": 0.', "summary.json: not JSON"),
    ("summary.json", b"\xff\xfe{}", "summary.json: not UTF-8"),
    ("summary.json", b"[1, 2]", "summary.json: not a JSON object"),
    ("summary.json", json.dumps({"global_batch_size": "128", "top1": 0.5, "epochs": 2, "steps": 20}).encode(),
     "global_batch_size is '128'"),
    ("summary.json", json.dumps({"global_batch_size": 128, "top1": 1.5, "epochs": 2, "steps": 20}).encode(),
     "top1 is '1.5'"),
    ("summary.json", json.dumps({"global_batch_size": 128, "top1": None, "epochs": 2, "steps": 20}).encode(),
     "nothing was evaluated"),
    ("summary.json", json.dumps({"global_batch_size": 128, "top1": 0.5, "epochs": 2, "steps": 20,
                                 "diverged": "no"}).encode(), "diverged is 'no'"),
    ("summary.json", json.dumps({"global_batch_size": 64, "top1": 0.5, "epochs": 2, "steps": 20}).encode(),
     "summary.json says batch 64, config.toml 128"),
    ("config.toml", b"[run\n", "config.toml: not valid TOML"),
    ("config.toml", b"run = 3\n", r"\[run\] is not a table"),
    ("config.toml", b"[run]\nbatch_size = 'big'\n", "run.batch_size: expected an integer"),
    ("config.toml", b"[optimizer]\nlr = -1.0\n[run]\nbatch_size = 128\n", "optimizer.lr"),
    ("config.toml", b"\xe9t\xe9 = 1\n", "config.toml: not UTF-8"),
    ("config.toml", b"[run]\nbatch_size = 128\nseed = 5\n", "the folder name says seed 0, its config.toml 5"),
    ("metrics.jsonl", b'{"kind": "epoch", "epoch": 1, "step": 10, "top1": 0.5}\n{"kind": "ep\n'
                      b'{"kind": "epoch", "epoch": 2, "step": 20, "top1": 0.7}\n', "line 2 is not JSON"),
    ("metrics.jsonl", b'[1]\n', "line 1 is not a JSON object"),
    ("metrics.jsonl", b'{"kind": "epoch", "epoch": 1, "step": "ten", "top1": 0.5}\n', "step is 'ten'"),
    ("metrics.jsonl", b'{"kind": "epoch", "epoch": 1, "step": 10, "top1": 7}\n', "top1 is '7'"),
    ("metrics.jsonl", b'\x80\n', "not UTF-8"),
]


@pytest.mark.parametrize("file, content, message", DAMAGE, ids=[m for _, _, m in DAMAGE])
def test_a_damaged_file_skips_its_run_with_one_line(tmp_path, make_run, file, content, message):
    make_run(tmp_path, "lars-b128-none-s0", 128)
    damaged = make_run(tmp_path, "lars-b128-none-s1", 128, seed=1) if file != "config.toml" else None
    if damaged is None:  # the seed check needs the seed-0 folder's own config
        damaged = tmp_path / "lars-b128-none-s0"
        make_run(tmp_path, "lars-b128-none-s1", 128, seed=1)
    (damaged / file).write_bytes(content)
    rows, warnings = collect_runs(tmp_path)
    assert len(rows) == 1 and rows[0]["run"] != damaged.name
    (warning,) = warnings
    assert damaged.name in warning and "\n" not in warning
    import re
    assert re.search(message, warning), warning
    with pytest.raises(DamagedRun, match=message):
        collect_runs(tmp_path, strict=True)


def test_a_half_written_last_metrics_line_is_a_record_being_written(tmp_path, make_run):
    run = make_run(tmp_path, "lars-b128-none-s0", 128)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "epoch", "epo')
    files = read_run(run)
    assert [r["epoch"] for r in files.epochs] == [1, 2]


def test_a_diverged_run_is_a_result_without_top1(tmp_path, make_run):
    make_run(tmp_path, "sgd-b128-none-s0", 128, optimizer="sgd", diverged=True, top1_by_epoch=((1, 0.1),))
    (row,), _ = collect_runs(tmp_path)
    assert row["diverged"] and row["top1"] is None and row["best_top1"] == 0.1


MERGE_ROW = {"run": "lars-b4096-none-s0", "variant": "lars", "batch_size": 4096, "optimizer": "lars",
             "augmentation": "none", "seed": 0, "top1": 0.9, "epochs": 20, "wall_s": 60.0}


@pytest.mark.parametrize("change, message", [
    ({"batch_size": "4096"}, "batch_size is '4096'"),
    ({"top1": None}, "top1 is 'None'"),
    ({"seed": -1}, "seed is '-1'"),
    ({"wall_s": float("inf")}, "wall_s is 'inf'"),
    ({"optimizer": "adamx"}, "optimizer 'adamx'"),
    ({"variant": "../x"}, "variant '../x'"),
    ({"run": "a\nb"}, "run is not a plain name"),
    ({"top1_by_epoch": [[1, 2]]}, "top1_by_epoch"),
    ({"diverged": 1}, "diverged is not true or false"),
])
def test_a_bad_merged_row_is_skipped_with_a_warning(tmp_path, change, message):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([MERGE_ROW, {**MERGE_ROW, "run": "lars-b4096-none-s1", "seed": 1, **change}]))
    rows, warnings = load_results(path)
    assert [r["run"] for r in rows] == ["lars-b4096-none-s0"]
    (warning,) = warnings
    assert message in warning and str(path) in warning
    with pytest.raises(DamagedRun, match="run 1"):
        load_results(path, strict=True)


def test_merged_rows_of_an_older_report_get_their_grid_point_from_the_name(tmp_path):
    path = tmp_path / "results.json"
    # an older report: no lr_factor, variant computed by a rule that cut at the first '-b'
    path.write_text(json.dumps([{**MERGE_ROW, "run": "lars-bias_excluded-b4096-none-s0-lr2", "variant": "lars"}]))
    (row,), _ = load_results(path)
    assert row["variant"] == "lars-bias_excluded" and row["lr_factor"] == 2.0 and row["diverged"] is False
