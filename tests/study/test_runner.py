import json

import pytest

from largebatch.cli import main
from largebatch.errors import ConfigError
from largebatch.study import load_study

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


def test_study_expands_the_grid_with_each_rule(tiny_data, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(STUDY.format(data=tiny_data))
    study = load_study(str(path), out=str(tmp_path / "out"))
    assert [r.name for r in study.runs] == ["sgd-b64-none-s0", "sgd-b256-none-s0", "lars-b64-none-s0",
                                            "lars-b256-none-s0"]
    from largebatch.schedule import scaled_lr
    sgd256 = study.runs[1].config
    assert scaled_lr(sgd256.optimizer.lr, 256, 64, sgd256.schedule.scaling) == pytest.approx(0.2)
    assert all(r.config.run.epochs == 1 for r in study.runs)


@pytest.mark.parametrize("text, message", [
    ("[study]\nbatch_sizes = [64]\n", "needs at least one"),
    ("[study]\nbatch_sizes = []\n[variants.a]\n", "batch_sizes must be a non-empty list"),
    ("[study]\nbatch_sizes = [64]\nbogus = 1\n[variants.a]\n", "unknown key 'study.bogus'"),
    ("[study]\nbatch_sizes = [64]\n[variants.a]\noptimizer = { name = 'adamx' }\n", "optimizer.name"),
    ("[study]\nbatch_sizes = [64]\n[variants.a]\nrunn = { seed = 1 }\n", "variants.a.runn"),
])
def test_bad_study_files_are_rejected(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_study(str(path))


def test_builtin_study_validates():
    study = load_study("study_fashion_mnist")
    assert {r.batch_size for r in study.runs} == {128, 1024, 2048, 4096, 8192, 16384}
    assert {r.variant for r in study.runs} == {"sgd", "lars"}


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
