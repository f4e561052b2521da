"""Training from a prepared originals tier gives the losses of training from the folder (fp64,
the same CPU decode path), and with progressive resizing every step gets its scheduled side."""

import io
import sys

import numpy as np
import pytest
from PIL import Image

from largebatch.config import build_config, load_recipe
from largebatch.data.prepare import Tier, prepare
from largebatch.progress import read_metrics
from largebatch.train import train


def imagenet_config(data, out, **overrides):
    values = {"data.dataset": "imagenet", "data.data_dir": str(data), "data.image_size": 16,
              "data.augmentation": "extended", "data.workers": 0, "model.name": "resnet20", "run.out": str(out),
              "run.epochs": 2, "run.batch_size": 16, "run.micro_batch_size": 8, "run.threads": 1,
              "run.precision": "fp64", "run.log_every": 1, "schedule.warmup_epochs": 0.5, "optimizer.lr": 0.5,
              **overrides}
    return build_config(load_recipe("fashion_mnist"), values)


def step_losses(out):
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r.get("kind") == "step"]


def folder_and_tier(root, helpers, train_per_class, val_per_class, size):
    source = helpers.write_imagenet(root / "src", classes=("n01", "n02", "n03", "n04"),
                                    train_per_class=train_per_class, val_per_class=val_per_class, size=size)
    prepare(source, root / "prepared", [Tier("originals")], images_per_shard=16, processes=1, stream=io.StringIO())
    return source, root / "prepared" / "originals"


def test_training_from_the_originals_tier_gives_the_losses_of_the_folder(tmp_path, helpers):
    source, tier = folder_and_tier(tmp_path, helpers, train_per_class=8, val_per_class=2, size=(64, 48))
    from_folder = train(imagenet_config(source, tmp_path / "folder"))
    from_shards = train(imagenet_config(tier, tmp_path / "shards"))
    folder_losses, shard_losses = step_losses(tmp_path / "folder"), step_losses(tmp_path / "shards")
    assert len(folder_losses) == 4 and folder_losses == shard_losses  # exactly: same images, same decode
    assert from_folder["top1"] == from_shards["top1"] and from_folder["train_images"] == 32


def test_progressive_resizing_trains_each_step_at_its_side(tmp_path, helpers, monkeypatch):
    _, tier = folder_and_tier(tmp_path, helpers, train_per_class=4, val_per_class=1, size=(64, 48))
    seen = []
    from largebatch import train as train_module
    original = train_module.forward_backward

    def recording(model, micro_batches, *args, **kwargs):
        seen.append(sorted({tuple(images.shape[-2:]) for images, _ in micro_batches}))
        return original(model, micro_batches, *args, **kwargs)

    monkeypatch.setattr(train_module, "forward_backward", recording)
    evaluated = []
    from largebatch import evaluate as evaluate_module
    original_evaluate = evaluate_module.load_batches

    def recording_evaluation(dataset, *args, **kwargs):
        evaluated.append(dataset.image_size)
        return original_evaluate(dataset, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "load_batches", recording_evaluation)
    # 16 images, batch 8: 2 steps per epoch; 16 px in epochs 0-1, 24 px from epoch 2; evaluation at 32 px
    train(imagenet_config(tier, tmp_path / "run", **{"run.epochs": 4, "run.batch_size": 8, "data.image_size": 24,
                                                     "data.resolution_start": 16, "data.resolution_ramp": [1, 2],
                                                     "data.eval_image_size": 32}))
    assert [s for step in seen for s in step] == [(16, 16)] * 4 + [(24, 24)] * 4
    assert set(evaluated) == {32}


@pytest.mark.slow
def test_imagenet_sized_corpus_prepared_then_trained_matches_the_folder(tmp_path):
    """2,048 textured 500x375 JPEGs (about 100 KB each at quality 90, as ImageNet's), 4 classes,
    written by the loader benchmark's corpus generator."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("loader_benchmark",
                                                  Path(__file__).resolve().parents[2] / "benchmarks" / "loader.py")
    benchmark = importlib.util.module_from_spec(spec)
    sys.modules["loader_benchmark"] = benchmark  # its corpus writer is pickled to worker processes by name
    spec.loader.exec_module(benchmark)
    source = benchmark.write_corpus(tmp_path / "src", train=2048, val=256, classes=4, processes=2)
    prepare(source, tmp_path / "prepared", [Tier("originals")], processes=2, stream=io.StringIO())
    overrides = {"data.image_size": 64, "run.epochs": 1, "run.batch_size": 256, "run.micro_batch_size": 64,
                 "data.workers": 1}
    folder = train(imagenet_config(source, tmp_path / "folder", **overrides))
    shards = train(imagenet_config(tmp_path / "prepared" / "originals", tmp_path / "shards", **overrides))
    assert len(step_losses(tmp_path / "folder")) == 8
    assert step_losses(tmp_path / "folder") == step_losses(tmp_path / "shards")
    assert folder["top1"] == shards["top1"]
    with Image.open(next((source / "train").rglob("*.JPEG"))) as image:
        assert image.size == (500, 375)
    sizes = [p.stat().st_size for p in (source / "train").rglob("*.JPEG")]
    assert 60_000 < np.mean(sizes) < 160_000
