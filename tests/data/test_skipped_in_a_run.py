"""Unreadable image files over a whole run: counted once, kept across a resume, in the summary."""

import json
import os
import signal

import pytest

from largebatch.config import build_config, load_recipe
from largebatch.errors import Interrupted
from largebatch.train import train


def imagenet_config(data, out, **overrides):
    values = {"data.dataset": "imagenet", "data.data_dir": str(data), "data.image_size": 16,
              "data.augmentation": "minimal", "data.workers": 0, "model.name": "resnet20", "run.out": str(out),
              "run.epochs": 3, "run.batch_size": 8, "run.micro_batch_size": 8, "run.threads": 1,
              "schedule.warmup_epochs": 0.0, "optimizer.lr": 0.1, "run.checkpoint_every": 1, **overrides}
    return build_config(load_recipe("fashion_mnist"), values)


def test_skipped_files_survive_a_resume_and_reach_the_summary(tmp_path, helpers, monkeypatch, capsys):
    data = helpers.write_imagenet(tmp_path / "imagenet", classes=("n01", "n02"), train_per_class=8,
                                  val_per_class=2, size=(24, 20))
    helpers.corrupt(data / "train" / "n01" / "n01_3.JPEG")
    helpers.truncate(data / "val" / "n02" / "n02_0.JPEG")
    out = tmp_path / "run"

    from largebatch.optim.lars import LARS
    original_step, calls = LARS.step, {"n": 0}

    def step_then_signal(self, closure=None):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2 (2 steps per epoch), after the first evaluation and checkpoint
            os.kill(os.getpid(), signal.SIGTERM)
        return original_step(self, closure)

    monkeypatch.setattr(LARS, "step", step_then_signal)
    with pytest.raises(Interrupted, match="at step 4"):  # seen at the next log boundary: the end of epoch 2
        train(imagenet_config(data, out))
    first = capsys.readouterr().err
    assert first.count("skipped unreadable image") == 2  # one training file, one test file
    monkeypatch.setattr(LARS, "step", original_step)
    summary = train(imagenet_config(data, out), resume="auto")
    second = capsys.readouterr().err
    assert "skipped unreadable image" not in second  # both were restored from the checkpoint
    assert summary["skipped_files"] == 2
    assert json.loads((out / "summary.json").read_text())["skipped_files"] == 2


def test_a_killed_loader_worker_is_one_line(tmp_path, helpers, monkeypatch, capsys):
    """A worker process dies mid-run (here it exits; the kernel's OOM killer is the usual cause)."""
    import torch.utils.data

    from largebatch.cli import main
    from largebatch.data.files import ImageFileDataset

    data = helpers.write_imagenet(tmp_path / "imagenet", classes=("n01", "n02"), train_per_class=8,
                                  val_per_class=2, size=(24, 20))
    original = ImageFileDataset.load_batch

    def dies_in_a_worker(self, *args, **kwargs):
        if torch.utils.data.get_worker_info() is not None:
            os._exit(1)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(ImageFileDataset, "load_batch", dies_in_a_worker)
    code = main(["train", "--dataset", "imagenet", "--data-dir", str(data), "--image-size", "16", "--model",
                 "resnet20", "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8", "--workers", "1",
                 "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "a data loader process died" in err[0] and "--resume auto" in err[0]
