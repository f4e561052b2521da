"""Data sets, batching and on-device normalisation.

Every data set yields uint8 images ``(C, H, W)`` and int64 labels; conversion to float and
normalisation happen in the training process, on the training device (:class:`Normalizer`),
so workers copy 4x fewer bytes and, on a GPU, the arithmetic is free.

In-memory data sets (Fashion-MNIST, MNIST, synthetic) make a batch by indexing a tensor in the
training process. Image-file data sets (ImageNet) decode in ``workers`` loader processes
(:mod:`largebatch.data.loader`); files that cannot be read are skipped, and the object that
asked for them keeps the list: ``TrainingStream.skipped`` and ``EvaluationBatches.skipped``
(:func:`skipped_files_all_ranks` unites them over the processes of a run).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from largebatch.data import idx, imagenet, resolution, shards
from largebatch.data.decisions import step_size
from largebatch.data.decode import EncodedReader, choose_backend, gpu_batches
from largebatch.data.files import Batch, Decision, ImageFileDataset, SkippedEntry, SkippedFiles, skipped_files_all_ranks
from largebatch.data.loader import file_batches, resolve_workers
from largebatch.data.transforms import eval_transform, train_transform
from largebatch.errors import DataError

__all__ = ["DataInfo", "TensorDataset", "SyntheticDataset", "ImageFileDataset", "build_datasets", "load_batches",
           "EvaluationBatches", "training_batches", "TrainingStream", "Normalizer", "SkippedFiles",
           "skipped_files_all_ranks", "resolve_workers"]

# Class names in label order, where the files do not hold them (IDX files hold only numbers).
CLASS_NAMES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),  # Xiao, Rasul, Vollgraf 2017, Table 1
    "mnist": tuple(str(digit) for digit in range(10)),
}

# Per-channel mean and std of the training images, in [0, 1] units.
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),  # computed over the 60,000 training images
    "mnist": ((0.1307,), (0.3081,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # the usual ImageNet values
    "synthetic": ((0.5, 0.5, 0.5), (0.289, 0.289, 0.289)),  # uniform bytes
}


@dataclass
class DataInfo:
    dataset: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_images: int
    test_images: int
    classes: tuple[str, ...] = ()  # class names in label order (an ImageNet folder's wnids)


class TensorDataset:
    """Images held in memory as one uint8 tensor; a batch is one indexing operation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        assert images.dtype == torch.uint8 and images.ndim == 4 and len(images) == len(labels)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices], self.labels[indices]

    def subset(self, indices: torch.Tensor) -> TensorDataset:
        return TensorDataset(*self.batch(indices))


class SyntheticDataset:
    """Random images for throughput measurement: a fixed pool, indexed modulo its size, so that
    making a batch costs what indexing in-memory data costs."""

    def __init__(self, size: int, num_classes: int, channels: int, image_size: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        pool = min(size, 64)
        self.images = torch.randint(0, 256, (pool, channels, image_size, image_size), dtype=torch.uint8,
                                    generator=generator)
        self.size, self.num_classes = size, num_classes

    def __len__(self) -> int:
        return self.size

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices % len(self.images)], indices % self.num_classes


def build_datasets(data_config, seed: int = 0):
    """(train set, test set, DataInfo) for ``data_config.dataset``."""
    name = data_config.dataset
    if name in ("fashion-mnist", "mnist"):
        folder = idx.locate(name, data_config.data_dir)
        train = TensorDataset(*idx.load_split(folder, "train"))
        test = TensorDataset(*idx.load_split(folder, "test"))
        channels, size, classes = 1, 28, 10
    elif name == "synthetic":
        size = data_config.image_size or 224
        classes = data_config.num_classes or 1000
        channels = 3
        train = SyntheticDataset(data_config.synthetic_images, classes, channels, size, seed)
        test = SyntheticDataset(max(1, data_config.synthetic_images // 10), classes, channels, size, seed + 1)
    elif name == "imagenet":
        root = imagenet.locate(data_config.data_dir)
        size = data_config.image_size or 224
        eval_size = getattr(data_config, "eval_image_size", 0) or size
        fast = data_config.fast_decode
        augment = train_transform(data_config.augmentation, size, data_config.color_jitter, data_config.lighting, fast)
        prepared = shards.find_prepared(root)
        if prepared is not None:  # tar shards read by index (largebatch prepare)
            cache = getattr(data_config, "cache_dir", "")
            train = shards.ShardDataset(prepared, "train", augment, seed, cache)
            test = shards.ShardDataset(prepared, "val", eval_transform(eval_size, fast, data_config.augmentation), seed, cache)
            classes = len(train.classes)
            class_names = tuple(train.classes)
        else:
            train_files = imagenet.list_split(root, "train")
            test_files = imagenet.list_split(root, "val", train_files.classes)
            classes = len(train_files.classes)
            class_names = tuple(train_files.classes)
            train = ImageFileDataset(train_files.folder, train_files.files, train_files.labels, augment, seed)
            test = ImageFileDataset(test_files.folder, test_files.files, test_files.labels,
                                    eval_transform(eval_size, fast, data_config.augmentation), seed)
        channels = 3
        train.resolution = resolution.build_schedule(size, getattr(data_config, "resolution_start", 0),
                                                     list(getattr(data_config, "resolution_ramp", [])))
        train.decode = getattr(data_config, "decode", "cpu")
    else:
        raise DataError(f"unknown data set '{name}'")
    if getattr(data_config, "resolution_start", 0) and name != "imagenet":
        raise DataError(f"data.resolution_start (progressive resizing) works on image files (imagenet), not {name}")
    if data_config.num_classes and name != "synthetic" and data_config.num_classes != classes:
        raise DataError(f"data.num_classes is {data_config.num_classes} but {name} has {classes} classes")
    if data_config.train_subset:
        if data_config.train_subset > len(train):
            raise DataError(f"data.train_subset ({data_config.train_subset}) exceeds the "
                            f"{len(train)} training images")
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:data_config.train_subset]
        keep = keep.sort().values
        train = train.subset(keep) if hasattr(train, "subset") else TensorDataset(*train.batch(keep))
    mean, std = STATS[name]
    names = class_names if name == "imagenet" else CLASS_NAMES.get(name, tuple(map(str, range(classes))))
    info = DataInfo(name, classes, channels, size, mean, std, len(train), len(test), names)
    return train, test, info


class EvaluationBatches:
    """(uint8 images, labels) for each list of indices, in order; after (or during) iteration,
    :attr:`skipped` lists the (path, reason) of the unreadable files this pass left out."""

    def __init__(self, dataset, index_lists: Iterable[torch.Tensor], workers: int = 0, pin_memory: bool | None = None,
                 skipped: SkippedFiles | None = None):
        self.dataset, self.index_lists, self.workers, self.pin_memory = dataset, index_lists, workers, pin_memory
        self.run_skipped = skipped
        self._skipped = SkippedFiles(warn=skipped is None)

    @property
    def skipped(self) -> list[SkippedEntry]:
        return self._skipped.entries()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not isinstance(self.dataset, ImageFileDataset):
            for indices in self.index_lists:
                yield self.dataset.batch(indices)
            return
        requests = ((indices, None) for indices in self.index_lists)
        for batch in file_batches(self.dataset, requests, self.workers, self.pin_memory):
            self._skipped.add(batch.skipped)
            if self.run_skipped is not None:
                self.run_skipped.add(batch.skipped)
            if batch.error:
                raise DataError(batch.error)
            if len(batch.labels):
                yield batch.images, batch.labels


def load_batches(dataset, index_lists: Iterable[torch.Tensor], workers: int = 0, pin_memory: bool | None = None,
                 skipped: SkippedFiles | None = None) -> EvaluationBatches:
    """(uint8 images, labels) for each list of indices, in order (evaluation: no random
    augmentation). Image files are decoded by ``workers`` processes (-1: automatic); unreadable
    ones are left out, and a batch left empty is not yielded. The returned iterable's
    ``.skipped`` lists what this pass left out; ``skipped`` (a run's :class:`SkippedFiles`, kept
    over several passes) also receives them and warns once per file over all passes (without
    it, each pass warns on its own)."""
    return EvaluationBatches(dataset, index_lists, workers, pin_memory, skipped)


class TrainingStream:
    """The per-step micro-batch stream the training loop consumes (see :func:`training_batches`)."""

    def __init__(self, dataset, sampler, start_step: int, total_steps: int, rank: int, world_size: int,
                 accumulation: int, workers: int = 0, pin_memory: bool | None = None, prefetch_factor: int = 2,
                 skipped: Iterable[str | SkippedEntry] = (), decode: str | None = None,
                 device: torch.device | None = None):
        self.accumulation = accumulation
        self.skipped_files = SkippedFiles(skipped)
        self.remaining = max(0, total_steps - start_step)
        self.backend = "memory"
        self.decisions: list[tuple[Decision, ...]] = []  # the last step's, per micro-batch (image files)
        if isinstance(dataset, ImageFileDataset):
            requests = ((indices, positions, step_size(dataset, sampler, step))
                        for step in range(start_step, total_steps)
                        for indices, positions in zip(sampler.micro_batches(step, rank, world_size, accumulation),
                                                      sampler.micro_batch_positions(step, rank, world_size,
                                                                                    accumulation)))
            self.backend = choose_backend(decode or getattr(dataset, "decode", "cpu"), device)
            if self.backend == "cpu":
                self._batches = file_batches(dataset, requests, workers, pin_memory, prefetch_factor)
            else:  # workers read bytes and decide; the GPU decodes
                encoded = file_batches(dataset, requests, workers, False, prefetch_factor, reader=EncodedReader)
                self._batches = gpu_batches(encoded, dataset, self.backend, torch.device(device))
        else:
            self._batches = (Batch(*dataset.batch(indices), [])
                             for step in range(start_step, total_steps)
                             for indices in sampler.micro_batches(step, rank, world_size, accumulation))

    def __iter__(self) -> TrainingStream:
        return self

    def __next__(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.remaining <= 0:
            raise StopIteration
        micro_batches, decisions = [], []
        for _ in range(self.accumulation):
            batch = next(self._batches)
            self.skipped_files.add(batch.skipped)
            if batch.error:
                raise DataError(batch.error)
            micro_batches.append((batch.images, batch.labels))
            decisions.append(batch.decisions)
        self.decisions = decisions
        self.remaining -= 1
        return micro_batches

    @property
    def skipped(self) -> list[SkippedEntry]:
        """(path, reason) of every unreadable file this rank's stream met, those restored with
        ``skipped=`` first; what a checkpoint keeps (after :func:`skipped_files_all_ranks`)."""
        return self.skipped_files.entries()


def training_batches(dataset, sampler, start_step: int, total_steps: int, rank: int, world_size: int,
                     accumulation: int, workers: int = 0, pin_memory: bool | None = None,
                     prefetch_factor: int = 2, skipped: Iterable[str | SkippedEntry] = (), decode: str | None = None,
                     device: torch.device | None = None) -> TrainingStream:
    """For each step from ``start_step`` to ``total_steps - 1``: this rank's micro-batches, a list
    of (uint8 images, labels). What a step sees depends on the step alone (exact resume), also
    for augmented image files: each image's random choices come from (seed, stream position).
    Image files are decoded by ``workers`` processes (-1: automatic; in-memory data ignore it);
    an unreadable file is replaced by the next readable one, warned about once and kept in the
    stream's ``.skipped``; ``skipped`` (paths, or (path, reason) pairs, from a checkpoint) are the
    files skipped before a resume, counted again without a second warning.

    ``decode`` (default: the data set's ``data.decode``, else cpu) chooses where JPEGs are decoded
    (:mod:`largebatch.data.decode`); ``device`` is the training device, which ``auto`` needs to
    pick a GPU decoder (without it, ``auto`` decodes on the CPU). With a GPU decoder the batches
    arrive on ``device``. Each step's side follows ``dataset.resolution`` (progressive resizing)."""
    return TrainingStream(dataset, sampler, start_step, total_steps, rank, world_size, accumulation, workers,
                          pin_memory, prefetch_factor, skipped, decode, device)


class Normalizer:
    """uint8 ``(N, C, H, W)`` on any device -> normalised float on the training device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.inverse_std = 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0)
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.dtype = dtype
        self.mean, self.inverse_std = self.mean.to(dtype), self.inverse_std.to(dtype)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        out = (images.to(self.dtype) - self.mean) * self.inverse_std
        return out.contiguous(memory_format=self.memory_format)
