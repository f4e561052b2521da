"""Small image trees and IDX files written by the tests themselves."""

from __future__ import annotations

import functools
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image



def natural_image(width: int, height: int, seed: int = 0, noise: float = 6.0) -> Image.Image:
    """Smooth colour gradients plus pixel noise: JPEG-compresses like a photograph, not like flat colour."""
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.zeros((height, width, 3), np.float32)
    for channel in range(3):
        a = generator.uniform(-1, 1, 3)
        pixels[..., channel] = (128 + 60 * np.sin(x / generator.uniform(width / 12, width / 3) + a[0])
                                * np.cos(y / generator.uniform(height / 12, height / 3) + a[1]) + 40 * a[2])
    pixels += generator.normal(0, noise, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@functools.lru_cache(maxsize=8)
def cached_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A natural-looking JPEG (quality 90), made once per test session."""
    return jpeg_bytes(natural_image(width, height, seed))


def write_tree(root: Path, classes: dict[str, int], size: tuple[int, int] = (48, 40), seed: int = 0) -> list[Path]:
    """``root/<class>/<class>_<i>.JPEG`` with ``classes[name]`` images each; returns the paths."""
    paths = []
    for c, (name, count) in enumerate(sorted(classes.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = root / name / f"{name}_{i}.JPEG"
            path.write_bytes(jpeg_bytes(natural_image(*size, seed=seed + 100 * c + i)))
            paths.append(path)
    return paths


def write_imagenet(root: Path, classes=("n01", "n02", "n03"), train_per_class: int = 4, val_per_class: int = 2,
                   size: tuple[int, int] = (48, 40)) -> Path:
    write_tree(root / "train", {c: train_per_class for c in classes}, size)
    write_tree(root / "val", {c: val_per_class for c in classes}, size, seed=5000)
    return root


def corrupt(path: Path) -> None:
    """Not an image at all."""
    path.write_bytes(b"this is not a JPEG file" * 10)


def truncate(path: Path) -> None:
    """A valid JPEG header, then the data stops halfway."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test gets its own file-list cache."""
    monkeypatch.setenv("LARGEBATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LARGEBATCH_DATA", raising=False)


@pytest.fixture
def helpers():
    """The functions above (pytest's importlib mode cannot import this file by name)."""
    return sys.modules[__name__]
