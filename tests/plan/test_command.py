"""`largebatch plan` on the command line: report, JSON, sweep, preset files, errors, no torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from largebatch.cli import main
from largebatch.plan import DEVICES, NETWORKS, get_device
from largebatch.plan.command import parse_sweep
from largebatch.plan.presets import load_preset_file, preset_to_dict
from largebatch.plan.records import RECORDS

SRC = str(Path(__file__).resolve().parents[2] / "src")
ISSUE_EXAMPLE = ["plan", "--model", "resnet50", "--batch-size", "32768", "--epochs", "90", "--device", "v100",
                 "--processors", "1024"]


def run_cli(args: list[str], code: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "largebatch", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def test_report_names_every_part_and_the_bottleneck(capsys):
    assert main(ISSUE_EXAMPLE) == 0
    out = capsys.readouterr().out
    for part in ("compute", "all-reduce ring", "all-reduce tree", "all-reduce hierarchical", "overlap",
                 "iteration", "epoch", "total", "efficiency", "bound"):
        assert part in out
    bound_lines = [line for line in out.splitlines() if line.strip().startswith("bound")]
    assert len(bound_lines) == 1 and "-bound" in bound_lines[0]


def test_json_has_the_promised_keys(capsys):
    assert main([*ISSUE_EXAMPLE, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    for key in ("compute_s_per_iter", "comm_s_per_iter", "iter_s", "epoch_s", "total_s", "efficiency", "bound"):
        assert key in plan
    assert plan["bound"] in ("compute", "bandwidth", "latency")
    assert plan["per_processor_batch"] == 32
    assert plan["iter_s"] >= plan["compute_s_per_iter"]
    assert plan["total_s"] == pytest.approx(90 * 1_281_167 / 32768 * plan["iter_s"])
    assert 0 < plan["efficiency"] <= 1


def test_sweep_over_processors_and_batch(capsys):
    assert main(["plan", "--device", "a100", "--batch-size", "8192", "--sweep", "processors=64,128,256", "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert [p["processors"] for p in plans] == [64, 128, 256]
    assert [p["per_processor_batch"] for p in plans] == [128, 64, 32]
    totals = [p["total_s"] for p in plans]
    assert totals == sorted(totals, reverse=True)  # more processors, less time at a fixed batch
    assert main(["plan", "--device", "knl", "--processors", "2048", "--sweep", "batch=1024..8192"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["processors", "batch"]
    assert len(out) == 1 + 3 + 1  # header, 2048/4096/8192, and the skipped 1024
    assert "skipped" in out[-1] and "1024 on 2048" in out[-1]


@pytest.mark.parametrize("text, expected", [
    ("processors=64,128", ("processors", [64, 128])),
    ("batch=1024..8192", ("batch", [1024, 2048, 4096, 8192])),
    ("processors = 8..8, 100", ("processors", [8, 100])),
])
def test_parse_sweep(text, expected):
    assert parse_sweep(text) == expected


@pytest.mark.parametrize("args, listed", [
    (["--device", "v99", "--processors", "4"], DEVICES),
    (["--device", "v100", "--network", "token-ring", "--processors", "4"], NETWORKS),
])
def test_unknown_preset_is_one_line_listing_the_names(args, listed):
    result = run_cli(["plan", *args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("largebatch: error:")
    for name in listed:
        assert name in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--device", "v100"], "--processors"),
    (["--device", "v100", "--processors", "4", "--sweep", "gpus=4"], "--sweep"),
    (["--device", "v100", "--processors", "64", "--batch-size", "32"], "at least one image per processor"),
    (["--device-file", "/no/such/preset.json", "--processors", "4"], "does not exist"),
    (["--processors", "4"], "--device"),
    (["--device", "v100", "--processors", "4", "--model", "vgg99"], "unknown model 'vgg99'"),
])
def test_bad_plan_arguments_fail_in_one_line(args, message, capsys):
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_plan_does_not_import_torch():
    code = ("import sys; from largebatch.cli import main; import largebatch.plan; "
            "main(['plan', '--device', 'knl', '--processors', '2048', '--json']); "
            "main(['plan', '--validate']); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = run_cli([], code=code)
    assert result.returncode == 0, result.stderr
    assert '"bound"' in result.stdout


def test_device_file_round_trip(tmp_path, capsys):
    path = tmp_path / "preset.json"
    device = get_device("v100")
    path.write_text(json.dumps(preset_to_dict(device, NETWORKS["ib-hdr"], {"command": "test"})))
    loaded, network = load_preset_file(path)
    assert loaded == device and network == NETWORKS["ib-hdr"]
    assert main(["plan", "--device-file", str(path), "--processors", "64", "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main(["plan", "--device", "v100", "--network", "ib-hdr", "--processors", "64", "--json"]) == 0
    from_name = json.loads(capsys.readouterr().out)
    assert from_file["total_s"] == pytest.approx(from_name["total_s"])
    assert from_file["network"] == "ib-hdr"  # the file's network is the default...
    assert main(["plan", "--device-file", str(path), "--network", "ib-fdr", "--processors", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["network"] == "ib-fdr"  # ...and --network overrides it


def test_device_file_with_unknown_key_is_rejected_by_name(tmp_path, capsys):
    path = tmp_path / "preset.json"
    document = preset_to_dict(get_device("v100"), None)
    document["device"]["turbo"] = 2
    path.write_text(json.dumps(document))
    assert main(["plan", "--device-file", str(path), "--processors", "4"]) == 2
    assert "unknown key 'device.turbo'" in capsys.readouterr().err


def test_list_and_validate_print_every_preset_and_record(capsys):
    assert main(["plan", "--list"]) == 0
    out = capsys.readouterr().out
    for name in (*DEVICES, *NETWORKS):
        assert name in out
    assert main(["plan", "--validate", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["run"] for row in rows] == [record.run for record in RECORDS]
    assert len(rows) >= 9  # the five first records and at least four more
    for row in rows:
        assert row["published_s"] > 0 and row["predicted_s"] > 0
        assert row["ratio"] == pytest.approx(row["predicted_s"] / row["published_s"])
        assert row["kind"] in ("calibration", "validation")
        assert row["within_target"] == (1 / 1.5 <= row["ratio"] <= 1.5)
    kinds = {row["run"]: row["kind"] for row in rows}
    assert kinds["Goyal et al. 2017, ResNet-50"] == "calibration"
    assert kinds["Akiba et al. 2017, ResNet-50"] == "validation"
    assert main(["plan", "--validate"]) == 0
    out = capsys.readouterr().out
    for record in RECORDS:
        assert record.run in out
    assert "calibration" in out and "validation records within 1.5x" in out


def test_issue_example_prints_a_lower_rate_at_32_per_gpu_and_the_curve_source(capsys):
    assert main(ISSUE_EXAMPLE) == 0
    out = capsys.readouterr().out
    curve = [line for line in out.splitlines() if line.strip().startswith("curve")]
    assert len(curve) == 1 and "DeepLearningExamples" in curve[0] and "R(32)" in curve[0]
    assert main([*ISSUE_EXAMPLE, "--json"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert main(["plan", "--device", "v100", "--batch-size", str(256 * 1024), "--processors", "1024", "--json"]) == 0
    large = json.loads(capsys.readouterr().out)
    assert small["per_processor_batch"] == 32 and large["per_processor_batch"] == 256
    assert small["images_per_second"] < large["images_per_second"] == pytest.approx(1200)
    assert small["curve_source"] == large["curve_source"]
    # At 256 per GPU the DGX-1's 40 cores cannot decode 8 x 1,200 images/s: input-bound.
    assert large["bound"] == "input" and large["iter_s"] == pytest.approx(large["input_s_per_iter"])


def test_curve_and_input_options(capsys):
    base = ["plan", "--device", "v100", "--batch-size", "32768", "--processors", "1024", "--json"]
    assert main([*base, "--half-batch", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["images_per_second"] == pytest.approx(1200)
    assert main([*base, "--decoder", "gpu"]) == 0
    assert json.loads(capsys.readouterr().out)["input_s_per_iter"] == 0
    assert main([*base, "--cores-per-node", "4", "--decode-rate", "100"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["input_images_per_second"] == pytest.approx(50) and plan["bound"] == "input"
    assert main([*base, "--overlap"]) == 0
    overlapped = json.loads(capsys.readouterr().out)
    assert 0 < overlapped["exposed_comm_s_per_iter"] < overlapped["comm_s_per_iter"]
    assert main([*base, "--overlap", "--bucket-mb", "200"]) == 0  # one bucket: nothing hidden
    one = json.loads(capsys.readouterr().out)
    assert one["exposed_comm_s_per_iter"] == pytest.approx(one["comm_s_per_iter"])
    assert main([*base, "--half-batch", "-1"]) == 2
    assert "--half-batch" in capsys.readouterr().err


def test_device_file_with_a_curve_round_trips_and_bad_curves_are_rejected(tmp_path, capsys):
    path = tmp_path / "preset.json"
    device = get_device("v100")
    path.write_text(json.dumps(preset_to_dict(device, None)))
    loaded, _ = load_preset_file(path)
    assert loaded == device and loaded.curve_batches == device.curve_batches  # JSON lists back to tuples
    for change, message in (({"curve_batches": [256, 128], "curve_images_per_second": [2, 1]}, "increasing"),
                            ({"curve_images_per_second": [1, 2]}, "batches but"),
                            ({"curve_batches": [1, "x"]}, "list of numbers"),
                            ({"decoder": "abacus"}, "decoder")):
        document = preset_to_dict(device, None)
        document["device"].update(change)
        path.write_text(json.dumps(document))
        assert main(["plan", "--device-file", str(path), "--processors", "4"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
