"""How many images a data set has, without loading it: for ``largebatch train --dry-run``.

Read from the data where it can be found (IDX headers, an ImageNet folder's listing); otherwise
the published sizes: Fashion-MNIST and MNIST 60,000 / 10,000 (Xiao et al. 2017; LeCun et al.),
ImageNet-1k 1,281,167 / 50,000 (Russakovsky et al. 2015, ILSVRC-2012).
"""

from __future__ import annotations

import gzip
from pathlib import Path

from largebatch.errors import ConfigError, DataError

PUBLISHED = {"fashion-mnist": (60_000, 10_000), "mnist": (60_000, 10_000), "imagenet": (1_281_167, 50_000)}


def _idx_count(path: Path) -> int:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        header = handle.read(8)
    if len(header) < 8 or header[:3] != b"\0\0\x08":
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    return int.from_bytes(header[4:8], "big")


def count_images(data_config) -> tuple[int, int, str]:
    """(training images, test images, where the numbers come from), ``train_subset`` applied."""
    name = data_config.dataset
    if name == "synthetic":
        train, test, source = data_config.synthetic_images, max(1, data_config.synthetic_images // 10), "configured"
    elif name in ("fashion-mnist", "mnist"):
        from largebatch.data import idx
        try:
            folder = idx.locate(name, data_config.data_dir)
            counts = []
            for stem in (idx.SPLIT_FILES["train"][0], idx.SPLIT_FILES["test"][0]):
                path = idx._find(folder, stem)
                if path is None:
                    raise DataError(f"{folder}: missing {stem}")
                counts.append(_idx_count(path))
            train, test, source = counts[0], counts[1], f"counted in {folder}"
        except (DataError, OSError, EOFError):
            (train, test), source = PUBLISHED[name], "published size (data not found here)"
    elif name == "imagenet":
        if data_config.data_dir:
            from largebatch.data import imagenet
            root = imagenet.locate(data_config.data_dir)
            train_files = imagenet.list_split(root, "train")
            test_files = imagenet.list_split(root, "val", train_files.classes)
            train, test, source = len(train_files.files), len(test_files.files), f"counted in {root}"
        else:
            (train, test), source = PUBLISHED[name], "ImageNet-1k's published size (no --data-dir given)"
    else:
        raise ConfigError(f"data.dataset {name}: its size is known only in Python (largebatch.fit)")
    if data_config.train_subset:
        train = min(train, data_config.train_subset)
    return train, test, source
