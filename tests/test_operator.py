"""Running it as an operator: progress in batch jobs, provenance, honest resume, run directories,
best checkpoint and export, TensorBoard."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from largebatch import checkpoint, models
from largebatch.cli import main
from largebatch.config import build_config, load_recipe
from largebatch.errors import CheckpointError
from largebatch.progress import Progress
from largebatch.train import train


def tiny(tiny_data, out, **run):
    values = {"data.data_dir": str(tiny_data), "run.out": str(out), "run.epochs": 2, "run.batch_size": 128,
              "run.micro_batch_size": 32, "schedule.warmup_epochs": 0.5, "optimizer.lr": 2.0, "run.threads": 1}
    values.update({f"run.{k}": v for k, v in run.items()})
    return build_config(load_recipe("fashion_mnist"), values)


def test_batch_job_output_has_progress_lines_inside_the_epoch(tiny_data, tmp_path, capsys):
    """stdout not a terminal (pytest captures it): ~30 steps in one epoch, a line every 10 steps."""
    config = build_config(load_recipe("fashion_mnist"), {
        "data.data_dir": str(tiny_data), "run.out": str(tmp_path / "run"), "run.epochs": 1, "run.batch_size": 16,
        "run.micro_batch_size": 16, "run.log_every": 10, "run.threads": 1, "data.train_subset": 480})
    train(config)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["10/30", "20/30", "30/30"]
    for line in lines:
        for field in ("epoch", "loss", "lr", "img/s", "data wait", "eta"):
            assert field in line, (field, line)


def test_progress_prints_at_least_every_interval_between_boundaries(monkeypatch):
    stream = io.StringIO()
    progress = Progress(100, 1, stream=stream, min_interval_s=30.0)
    now = {"t": 1000.0}
    monkeypatch.setattr("largebatch.progress.time.monotonic", lambda: now["t"])
    progress._last_line = now["t"]
    progress.step(1, 0.01, 0.1, 50.0)
    assert stream.getvalue() == ""
    now["t"] += 31
    progress.step(2, 0.02, 0.1, 50.0)
    assert stream.getvalue().startswith("step 2/100")
    now["t"] += 31
    progress.evaluation(500, 1000)
    assert "evaluating: 500/1,000 images" in stream.getvalue()


def test_run_json_holds_provenance(tiny_data, tmp_path):
    train(tiny(tiny_data, tmp_path / "run", epochs=1))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    for key in ("largebatch", "torch", "python", "cuda", "git_commit", "command", "host", "world_size", "device",
                "device_name", "started", "finished", "classes"):
        assert key in run, key
    assert run["world_size"] == 1 and run["finished"] and run["classes"]["Ankle boot"] == 9
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert "num_classes = 10" in saved and "image_size = 28" in saved  # resolved, not 0


def test_resume_with_changed_data_is_refused_and_changes_nothing(tiny_data, tmp_path, capsys):
    """The reproduction: a finished run resumed with --epochs 1 --train-subset 256."""
    out = tmp_path / "run"
    train(tiny(tiny_data, out, epochs=2))
    names = ("config.toml", "summary.json", "metrics.jsonl", "run.json")
    before = {name: (out / name).read_bytes() for name in names}
    capsys.readouterr()
    code = main(["train", "--data-dir", str(tiny_data), "--out", str(out), "--batch-size", "128",
                 "--micro-batch-size", "32", "--warmup-epochs", "0.5", "--lr", "2.0", "--epochs", "1",
                 "--train-subset", "256", "--resume", "auto"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "data.train_subset is 0 there and 256 here" in lines[0] and "run.epochs is 2 there and 1 here" in lines[0]
    assert "--extend-schedule" in lines[0]
    assert {name: (out / name).read_bytes() for name in names} == before


def test_extend_schedule_lets_a_resume_add_epochs_and_says_what_changes(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(tiny_data, out, epochs=1))
    with pytest.raises(CheckpointError, match="run.epochs is 1 there and 2 here"):
        train(tiny(tiny_data, out, epochs=2), resume="auto")
    capsys.readouterr()
    summary = train(tiny(tiny_data, out, epochs=2), resume="auto", extend_schedule=True)
    assert summary["steps"] == 8
    text = capsys.readouterr().out
    assert "schedule changed at step 4: 4 -> 8 steps" in text
    run = json.loads((out / "run.json").read_text())
    assert run["resumes"][-1]["at_step"] == 4 and run["resumes"][-1]["changed"]["run.epochs"] == [1, 2]


def test_a_changed_lr_on_resume_is_recorded(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    from largebatch.errors import Interrupted
    import os
    import signal
    from largebatch.optim.guard import GuardedStep
    original, calls = GuardedStep.__call__, {"n": 0}

    def step_then_signal(self, optimizer):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, optimizer)
    monkeypatch.setattr(GuardedStep, "__call__", step_then_signal)
    with pytest.raises(Interrupted):
        train(tiny(tiny_data, out, epochs=2))
    monkeypatch.setattr(GuardedStep, "__call__", original)
    config = tiny(tiny_data, out, epochs=2)
    config.optimizer.lr = 1.0
    train(config, resume="auto")
    run = json.loads((out / "run.json").read_text())
    assert run["resumes"][-1]["changed"] == {"optimizer.lr": [2.0, 1.0]}


def test_default_run_directory_says_what_the_run_is(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny(tiny_data, "", epochs=1)
    train(config)
    assert (tmp_path / "runs" / "fashion-mnist-fast_resnet-b128-lars-s0" / "summary.json").is_file()


def test_best_checkpoint_is_kept_and_export_loads_strictly(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny(tiny_data, out, epochs=3, keep_checkpoints=1))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if r.get("kind") == "epoch"]
    best = max(evaluated, key=lambda r: r["top1"])
    assert checkpoint.load(out / "checkpoints" / "best.pt")["step"] == best["step"]
    assert main(["export", str(out), "--best", "--out", str(tmp_path / "weights.pt")]) == 0
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    fresh = models.build("fast_resnet", num_classes=10, in_channels=1)
    fresh.load_state_dict(weights, strict=True)
    classes = json.loads((tmp_path / "weights.pt.classes.json").read_text())
    assert classes["T-shirt/top"] == 0 and len(classes) == 10


def test_exported_resnet18_loads_into_our_resnet18_by_torchvision_key_names(tmp_path):
    """Export writes the model's own keys; for the ResNets these are torchvision's."""
    model = models.build("resnet18", num_classes=10, in_channels=3)
    run = tmp_path / "run"
    checkpoint.save(run / "checkpoints", 1, {"model": model.state_dict(), "step": 1,
                                             "data": {"classes": [f"n{i:08d}" for i in range(10)]}})
    assert main(["export", str(run), "--out", str(tmp_path / "r18.pt")]) == 0
    weights = torch.load(tmp_path / "r18.pt", weights_only=True)
    models.build("resnet18", num_classes=10, in_channels=3).load_state_dict(weights, strict=True)
    assert {"conv1.weight", "bn1.running_mean", "layer4.1.bn2.weight", "fc.weight", "fc.bias"} <= set(weights)
    try:
        import torchvision
    except Exception:
        return
    torchvision.models.resnet18(num_classes=10).load_state_dict(weights, strict=True)


def test_tensorboard_events_hold_the_scalars(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    train(tiny(tiny_data, out, epochs=2, tensorboard=True, log_every=2))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "epoch/top1", "epoch/top5", "trust_ratio/median"} <= tags
    assert [e.step for e in events.Scalars("epoch/top1")] == [4, 8]


def test_tensorboard_missing_is_one_clear_line(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    from largebatch.errors import ConfigError
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        train(tiny(tiny_data, tmp_path / "run", epochs=1, tensorboard=True))
