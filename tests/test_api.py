"""largebatch.fit: any nn.Module on any map-style data set, through the engine of `largebatch train`."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

import largebatch
from largebatch.errors import ConfigError, DataError, Interrupted
from largebatch.optim.guard import GuardedStep


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(8 * 16, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Shapes:
    """A map-style data set of 16x16 colour images whose class is the bright quadrant."""

    def __init__(self, count: int, seed: int, as_numpy: bool = False):
        generator = np.random.default_rng(seed)
        self.labels = generator.integers(0, 4, count)
        self.images = generator.integers(0, 80, (count, 16, 16, 3)).astype(np.uint8)
        for image, label in zip(self.images, self.labels):
            row, col = divmod(int(label), 2)
            image[row * 8:row * 8 + 8, col * 8:col * 8 + 8] += 150
        self.as_numpy = as_numpy

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        if not self.as_numpy:
            image = torch.from_numpy(image).permute(2, 0, 1)  # uint8 (C, H, W)
        return image, int(self.labels[index])


def settings(out, **extra):
    return {"batch_size": 64, "micro_batch_size": 32, "epochs": 2, "lr": 1.0, "warmup_epochs": 0.5,
            "out": str(out), "threads": 1, **extra}


def test_fit_trains_a_custom_module_on_a_custom_dataset(tmp_path):
    torch.manual_seed(0)
    summary = largebatch.fit(SmallCNN(), Shapes(512, 0), Shapes(128, 1), **settings(tmp_path / "run"))
    assert summary["steps"] == 16 and summary["test_images"] == 128
    assert summary["top1"] > 0.5  # 4 classes: chance is 0.25
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["top1"] == summary["top1"] and saved["model"] == "SmallCNN" and saved["dataset"] == "custom"
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_fit_accepts_numpy_images_the_same_as_tensors(tmp_path):
    tensors = largebatch.fit(SmallCNN(), Shapes(256, 0), Shapes(64, 1), **settings(tmp_path / "a", epochs=1))
    arrays = largebatch.fit(SmallCNN(), Shapes(256, 0, as_numpy=True), Shapes(64, 1, as_numpy=True),
                            **settings(tmp_path / "b", epochs=1))
    assert tensors["top1"] == arrays["top1"]


def model(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)  # the model is the user's: fit() trains it as constructed
    return SmallCNN()


def final_weights(run):
    from largebatch import checkpoint
    return checkpoint.load(checkpoint.list_checkpoints(run / "checkpoints")[-1])["model"]


def test_a_resumed_fit_continues_where_it_stopped(tmp_path, monkeypatch):
    reference = largebatch.fit(model(), Shapes(512, 0), Shapes(128, 1), **settings(tmp_path / "reference"))
    original, calls = GuardedStep.__call__, {"n": 0}

    def step_then_signal(self, optimizer):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, optimizer)
    monkeypatch.setattr(GuardedStep, "__call__", step_then_signal)
    with pytest.raises(Interrupted):
        largebatch.fit(model(), Shapes(512, 0), Shapes(128, 1), **settings(tmp_path / "run", log_every=6))
    monkeypatch.setattr(GuardedStep, "__call__", original)
    resumed = largebatch.fit(model(1), Shapes(512, 0), Shapes(128, 1), resume="auto",  # weights come from the checkpoint
                             **settings(tmp_path / "run", log_every=6))
    assert resumed["steps"] == 16
    assert resumed["top1"] == reference["top1"] and resumed["top5"] == reference["top5"]
    for key, value in final_weights(tmp_path / "reference").items():
        assert torch.equal(value, final_weights(tmp_path / "run")[key]), key


def test_fit_refuses_unknown_settings_and_bad_data_by_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'batchsize'"):
        largebatch.fit(SmallCNN(), Shapes(64, 0), Shapes(16, 1), batchsize=64)
    with pytest.raises(ConfigError, match="batch_size"):
        largebatch.fit(SmallCNN(), Shapes(64, 0), Shapes(16, 1), batch_size=-1)
    with pytest.raises(DataError, match=r"train_set\[0\]: expected an \(image, label\) pair"):
        largebatch.fit(SmallCNN(), [torch.zeros(3, 16, 16)] * 8, Shapes(16, 1), out=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        largebatch.fit("resnet18", Shapes(64, 0), Shapes(16, 1))
