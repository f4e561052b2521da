"""Shared fixtures: a tiny Fashion-MNIST-format data set written by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from largebatch.data.idx import write_idx

# Keep each test process to one thread: the machines have 2 cores, and tests run beside each other.
torch.set_num_threads(1)


def write_tiny_fashion_mnist(folder: Path, train: int = 512, test: int = 256, seed: int = 0) -> Path:
    """IDX files of 28x28 images whose class is a bright square's position: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 5)
            # textured, not flat: flat regions give exact ties in max-pooling, which round-off then
            # breaks differently in runs that should agree (e.g. 4 processes vs 4 accumulation steps)
            images[i, 4 + row * 12:12 + row * 12, 2 + col * 5:6 + col * 5] = rng.integers(170, 256, (8, 4))
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_fashion_mnist(tmp_path_factory.mktemp("data") / "fashion-mnist")


@pytest.fixture
def cli_env(tiny_data) -> dict[str, str]:
    """Environment for running `python -m largebatch` in a subprocess on the tiny data."""
    env = dict(os.environ)
    env["LARGEBATCH_DATA"] = str(tiny_data.parent)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture
def make_tiny_data():
    """``make_tiny_data(folder, train=512, test=256, seed=0)``: write a tiny data set elsewhere."""
    return write_tiny_fashion_mnist
