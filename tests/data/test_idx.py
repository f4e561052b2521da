"""MNIST / Fashion-MNIST IDX files written by the tests: good, bad magic, truncated, size mismatch."""

import gzip
from types import SimpleNamespace

import numpy as np
import pytest

from largebatch.data import build_datasets, idx
from largebatch.errors import DataError


def write_split(folder, split, count, gz=True, seed=0):
    generator = np.random.default_rng(seed)
    image_stem, label_stem = idx.SPLIT_FILES[split]
    suffix = ".gz" if gz else ""
    images = generator.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = generator.integers(0, 10, count, dtype=np.uint8)
    idx.write_idx(folder / (image_stem + suffix), images)
    idx.write_idx(folder / (label_stem + suffix), labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip(tmp_path, gz):
    images, labels = write_split(tmp_path, "train", 5, gz)
    loaded_images, loaded_labels = idx.load_split(tmp_path, "train")
    assert loaded_images.shape == (5, 1, 28, 28) and loaded_images.dtype.is_floating_point is False
    assert np.array_equal(loaded_images[:, 0].numpy(), images)
    assert loaded_labels.tolist() == labels.tolist()


def test_header_by_hand(tmp_path):
    path = tmp_path / "tiny-idx2-ubyte"
    path.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6)))
    assert idx.read_idx(path).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_bad_magic(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x0D, 3]) + bytes(12))  # 0x0D: float data, not unsigned bytes
    with pytest.raises(DataError, match=f"{path}: not an unsigned-byte IDX file"):
        idx.read_idx(path)


def test_truncated_header_and_data(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0]))
    with pytest.raises(DataError, match="IDX header truncated"):
        idx.read_idx(path)
    idx.write_idx(path, np.zeros((4, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"header says \(4, 28, 28\) \(3152 bytes\) but the file has 3052 bytes"):
        idx.read_idx(path)


def test_broken_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(200))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"{path}: cannot read IDX file"):
        idx.read_idx(path)


def test_split_consistency_checks(tmp_path):
    write_split(tmp_path, "train", 5)
    idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="5 images but 4 labels in the train split"):
        idx.load_split(tmp_path, "train")
    idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(5, 12, np.uint8))
    with pytest.raises(DataError, match="label 12 out of range 0-9"):
        idx.load_split(tmp_path, "train")
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        idx.load_split(tmp_path, "train")


def test_locate_and_build(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {"fashion-mnist": str(tmp_path / "system"), "mnist": "/nonexistent"})
    monkeypatch.delenv("LARGEBATCH_DATA", raising=False)
    with pytest.raises(DataError, match="fashion-mnist not found .*dataset-fashion-mnist"):
        idx.locate("fashion-mnist", "")
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    write_split(folder, "train", 8)
    write_split(folder, "test", 3, seed=1)
    monkeypatch.setenv("LARGEBATCH_DATA", str(tmp_path / "data"))
    assert idx.locate("fashion-mnist", "") == folder
    config = SimpleNamespace(dataset="fashion-mnist", data_dir=str(folder), image_size=0, num_classes=0,
                             train_subset=6, workers=-1)
    train, test, info = build_datasets(config, seed=0)
    assert (len(train), len(test), info.channels, info.image_size, info.num_classes) == (6, 3, 1, 28, 10)
