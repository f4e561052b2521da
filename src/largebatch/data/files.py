"""A data set of image files, decoded and augmented on demand into uint8 batches.

A batch is written straight into one ``(N, H, W, 3)`` uint8 buffer (in shared memory when built
in a loader worker, so handing it to the training process copies nothing) and returned as the
``(N, 3, H, W)`` view of it: channels-last strides, the layout the models run in.

Bad files never stop a run. An unreadable or truncated image is *skipped*: in training its slot
is filled by the next readable image of the data set (index + 1, + 2, ...), augmented with the
slot's own random choices, so batch sizes, and what every other slot sees, do not change; in
evaluation it is left out (each remaining image still counts once). Every batch carries the
skipped paths back to the training process, where the stream or evaluation pass that asked for
the batch keeps them (:class:`SkippedFiles`: one warning per file).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from largebatch.data.transforms import ImageTransform, image_rng
from largebatch.errors import DataError

# What a broken, truncated, vanished or absurd file raises from PIL.
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
MAX_REPLACEMENTS = 64  # unreadable images in a row before the data set is declared broken


class Decision(NamedTuple):
    """What was decided for one slot of a batch: the image decoded (after any replacement of an
    unreadable one), the stream position whose random choices it got (-1: evaluation), its crop
    box in stored-image pixels, whether it was flipped, and the output side."""
    index: int
    position: int
    box: tuple[float, float, float, float]
    flip: bool
    size: int


class Batch(NamedTuple):
    images: torch.Tensor  # uint8 (N, 3, H, W), channels-last strides
    labels: torch.Tensor  # int64 (N,)
    skipped: list[tuple[str, str]]  # (path, reason) of files that could not be read
    error: str | None = None  # a fatal problem, raised as DataError by the training process
    decisions: tuple[Decision, ...] = ()  # one per image, in order


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:160]


class ImageFileDataset:
    """Image files under ``folder`` with class labels; ``transform`` makes each ``size x size``.

    ``seed`` is the run seed: the random choices for the image at stream position ``p`` come
    from ``image_rng(seed, p)`` (:mod:`largebatch.data.transforms`). ``resolution`` (a
    :class:`~largebatch.data.resolution.ResolutionSchedule`, training only) makes the output
    side a function of the step; the training stream passes each step's side to
    :meth:`load_batch`.

    Subclasses that hold the files elsewhere (tar shards) override :meth:`open_image`,
    :meth:`read_bytes`, :meth:`path` and :meth:`subset`; decoding and every decision stay here."""

    resolution = None  # ResolutionSchedule | None

    def __init__(self, folder: str | os.PathLike, files: Sequence[str], labels: Sequence[int] | np.ndarray,
                 transform: ImageTransform, seed: int = 0):
        if len(files) != len(labels):
            raise ValueError("files and labels differ in length")
        self.folder = os.fspath(folder)
        # One fixed-width byte array rather than a list of str: forked workers then share its
        # pages instead of copying them as reference counts change.
        self.files = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return self.transform.size

    def path(self, index: int) -> str:
        """Where image ``index`` is, for messages and skipped-file lists."""
        return os.path.join(self.folder, os.fsdecode(self.files[index]))

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageFileDataset:
        keep = np.asarray(indices, dtype=np.int64)
        subset = ImageFileDataset.__new__(ImageFileDataset)
        subset.__dict__.update(self.__dict__)
        subset.files, subset.labels = self.files[keep], self.labels[keep]
        return subset

    def open_image(self, index: int) -> Image.Image:
        """Image ``index`` opened (header read, pixels not yet decoded); raises one of
        ``READ_ERRORS`` on a bad file, :class:`DataError` on damaged storage."""
        return Image.open(self.path(index))

    def read_bytes(self, index: int) -> bytes:
        """The stored (encoded) bytes of image ``index``."""
        with open(self.path(index), "rb") as handle:
            return handle.read()

    def encoded_header(self, index: int, data: bytes) -> tuple[int, int, bool]:
        """(width, height, whether a GPU JPEG decoder takes it) of image ``index`` from its stored
        ``data``: a baseline RGB or greyscale JPEG."""
        with Image.open(io.BytesIO(data)) as image:
            return image.width, image.height, image.format == "JPEG" and image.mode in ("RGB", "L")

    def dimensions(self, index: int) -> tuple[int, int]:
        """(width, height) of the stored image, from its header."""
        with self.open_image(index) as image:
            return image.size

    def read(self, index: int, rng, size: int = 0) -> np.ndarray:
        """One image, uint8 ``(size, size, 3)``; raises one of ``READ_ERRORS`` on a bad file."""
        with self.open_image(index) as image:
            return self.transform(image, rng, size)

    def load_batch(self, indices: Sequence[int], positions: Sequence[int] | None = None, size: int = 0) -> Batch:
        """Decode ``indices`` to ``size x size`` (0: the transform's size). With ``positions``
        (training): stream positions that seed each slot's random choices; bad files are replaced.
        Without (evaluation): deterministic transform; bad files are left out. Damaged storage
        (a shard that fails its checksum) is a fatal ``error``."""
        indices = [int(i) for i in indices]
        size = size or self.transform.size
        images = torch.empty((len(indices), size, size, 3), dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            images.share_memory_()
        pixels = images.numpy()
        labels: list[int] = []
        decisions: list[Decision] = []
        skipped: list[tuple[str, str]] = []

        def failed(error: str) -> Batch:
            return Batch(images[:0].permute(0, 3, 1, 2), torch.zeros(0, dtype=torch.int64), skipped, error)

        for slot, index in enumerate(indices):
            candidates = [index] if positions is None else \
                [(index + k) % len(self) for k in range(min(MAX_REPLACEMENTS, len(self)))]
            position = int(positions[slot]) if positions is not None else -1
            for candidate in candidates:
                rng = image_rng(self.seed, position) if positions is not None else None
                try:
                    with self.open_image(candidate) as image:
                        params = self.transform.sample(image.width, image.height, rng, size)
                        pixels[len(labels)] = self.transform.render(image, params)
                except DataError as error:
                    return failed(str(error))
                except READ_ERRORS as error:
                    skipped.append((self.path(candidate), _reason(error)))
                    continue
                labels.append(int(self.labels[candidate]))
                decisions.append(Decision(candidate, position, params.box, params.flip, size))
                break
            else:
                if positions is not None:
                    return failed(f"{self.path(index)}: it and the {len(candidates) - 1} images after it are all "
                                  "unreadable; check the data set")
        return Batch(images[:len(labels)].permute(0, 3, 1, 2), torch.tensor(labels, dtype=torch.int64), skipped,
                     None, tuple(decisions))

    def batch(self, indices: torch.Tensor, skipped: SkippedFiles | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation-style batch in this process: bad files are left out (and added to ``skipped``)."""
        loaded = self.load_batch(indices.tolist())
        if loaded.error:
            raise DataError(loaded.error)
        if skipped is not None:
            skipped.add(loaded.skipped)
        return loaded.images, loaded.labels


# -------------------------------------------------------------------------------------------
# Skipped files: owned by the stream or evaluation pass that met them

SkippedEntry = tuple[str, str]  # (path, reason)


class SkippedFiles:
    """The distinct unreadable files one process met, in the order met, as (path, reason).

    The first time a path is added, one line on stderr names it (``warn``); paths restored from
    a checkpoint (``restored``: paths or (path, reason) pairs) count without a warning."""

    def __init__(self, restored: Iterable[str | SkippedEntry] = (), warn: bool = True):
        self._entries: dict[str, str] = {}
        self.warn = warn
        for item in restored:
            path, reason = (item, "skipped before the run was resumed") if isinstance(item, str) else item
            self._entries.setdefault(str(path), str(reason))

    def add(self, entries: Iterable[SkippedEntry]) -> None:
        for path, reason in entries:
            if path not in self._entries:
                self._entries[path] = reason
                if self.warn:
                    print(f"largebatch: warning: skipped unreadable image {path} ({reason}); "
                          f"{len(self._entries)} skipped so far", file=sys.stderr, flush=True)

    def entries(self) -> list[SkippedEntry]:
        return list(self._entries.items())

    def paths(self) -> list[str]:
        return sorted(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries


def skipped_files_all_ranks(entries: Iterable[str | SkippedEntry]) -> list[str]:
    """The sorted union over all processes of the run of the skipped paths each passes in (paths
    or (path, reason) pairs). A collective operation when torch.distributed is initialised with
    more than one process: every rank must call it."""
    local = sorted({item if isinstance(item, str) else item[0] for item in entries})
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() == 1:
        return local
    gathered: list[list[str] | None] = [None] * distributed.get_world_size()
    distributed.all_gather_object(gathered, local)
    return sorted(set().union(*(set(paths or []) for paths in gathered)))
