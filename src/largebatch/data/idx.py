"""MNIST and Fashion-MNIST in their IDX files (gzip-compressed or not).

Format (LeCun et al.): big-endian magic 0x0000 08 NN (unsigned byte data, NN dimensions), then NN
uint32 sizes, then the data. Images are ``(n, 28, 28)``, labels ``(n,)``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from largebatch.errors import DataError

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SYSTEM_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist"}
HOW_TO_GET = {
    "fashion-mnist": "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                     "or put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                     "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in a folder given with --data-dir",
    "mnist": "put the four MNIST IDX files (train-images-idx3-ubyte.gz ...) in a folder given with --data-dir",
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file, checking its header against its size."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read IDX file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header says {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def locate(dataset: str, data_dir: str) -> Path:
    """--data-dir, else $LARGEBATCH_DATA/<dataset>, else the Debian package's folder."""
    candidates = [Path(data_dir)] if data_dir else []
    if not data_dir:
        if os.environ.get("LARGEBATCH_DATA"):
            candidates.append(Path(os.environ["LARGEBATCH_DATA"]) / dataset)
        candidates.append(Path(SYSTEM_DIRS[dataset]))
    for folder in candidates:
        if _find(folder, SPLIT_FILES["train"][0]):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"{dataset} not found (looked in {looked}): {HOW_TO_GET[dataset]}")


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 ``(n, 1, 28, 28)`` and labels as int64 ``(n,)``."""
    image_stem, label_stem = SPLIT_FILES[split]
    image_path, label_path = _find(folder, image_stem), _find(folder, label_stem)
    for path, stem in ((image_path, image_stem), (label_path, label_stem)):
        if path is None:
            raise DataError(f"{folder}: missing {stem}(.gz) for the {split} split")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{image_path}: expected images (n, rows, cols) and labels (n,), "
                        f"got {images.shape} and {labels.shape}")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28 for the "
                        f"{split} split of an MNIST-format data set")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels in the {split} split")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{label_path}: label {labels.max()} out of range 0-9")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an unsigned-byte IDX file (gzip if the name ends in .gz); used by tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())
