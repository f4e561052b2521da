"""Record the golden losses of tests/test_golden.py with the engine of this checkout:

    PYTHONPATH=src python tests/golden/record.py   (writes tests/golden/losses.json)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_tiny_fashion_mnist  # noqa: E402

from largebatch.config import build_config, load_recipe  # noqa: E402
from largebatch.progress import read_metrics  # noqa: E402
from largebatch.train import train  # noqa: E402

# name: overrides on the fashion_mnist recipe. 8 steps each: 512 images, batch 128, 2 epochs.
CASES = {
    "lars": {},
    "sgd_nesterov": {"optimizer.name": "sgd", "optimizer.lr": 0.05, "optimizer.nesterov": True},
    "lamb_minimal": {"optimizer.name": "lamb", "optimizer.lr": 0.02, "optimizer.weight_decay": 0.01,
                     "data.augmentation": "minimal"},
}


def golden_config(data: Path, out: Path, overrides: dict) -> object:
    values = {"data.data_dir": str(data), "run.out": str(out), "run.epochs": 2, "run.batch_size": 128,
              "run.micro_batch_size": 32, "run.precision": "fp64", "run.log_every": 1, "run.threads": 1,
              "schedule.warmup_epochs": 0.5, "optimizer.lr": 2.0, **overrides}
    return build_config(load_recipe("fashion_mnist"), values)


def step_losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r.get("kind") == "step"]


def record() -> dict:
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_tiny_fashion_mnist(Path(tmp) / "fashion-mnist")
        for name, overrides in CASES.items():
            out = Path(tmp) / name
            summary = train(golden_config(data, out, overrides))
            results[name] = {"losses": step_losses(out), "top1": summary["top1"]}
    return results


if __name__ == "__main__":
    (Path(__file__).parent / "losses.json").write_text(json.dumps(record(), indent=2) + "\n")
