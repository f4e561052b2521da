"""Which images each process sees at each optimizer step.

The training data is one endless stream: the concatenation of per-epoch permutations, each
drawn from ``(seed, epoch)``. Optimizer step ``t`` takes stream positions
``[t * B, (t + 1) * B)`` for global batch ``B``, so no image is dropped at an epoch's end, an
epoch is ``N / B`` steps (a fraction when ``B`` does not divide ``N``), and the position in the
data is the step alone: a resumed run continues with the next batch exactly.

The global batch is cut into ``world_size`` equal slices in order, one per rank, and each slice
into ``accumulation`` micro-batches. So 2 processes x 1 micro-batch and 1 process x 2
accumulated micro-batches see identical micro-batches, which is what makes them give identical
weights (BatchNorm statistics are per micro-batch in both).
"""

from __future__ import annotations

import torch


def epoch_permutation(num_images: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the images in one epoch, the same on every rank for (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_images, generator=generator)


class StreamSampler:
    """Global-batch and per-rank micro-batch indices for each optimizer step."""

    def __init__(self, num_images: int, global_batch: int, seed: int = 0):
        if num_images <= 0:
            raise ValueError("empty training set")
        self.num_images = num_images
        self.global_batch = global_batch
        self.seed = seed
        self._cache: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:  # keep the current and next epoch only
                self._cache.pop(min(self._cache))
            self._cache[epoch] = epoch_permutation(self.num_images, self.seed, epoch)
        return self._cache[epoch]

    def epoch_at(self, step: int) -> float:
        """Epochs completed after ``step`` steps (fractional)."""
        return step * self.global_batch / self.num_images

    def global_indices(self, step: int) -> torch.Tensor:
        start = step * self.global_batch
        stop = start + self.global_batch
        pieces = []
        while start < stop:
            epoch, offset = divmod(start, self.num_images)
            take = min(stop - start, self.num_images - offset)
            pieces.append(self._permutation(epoch)[offset:offset + take])
            start += take
        return torch.cat(pieces)

    def micro_batches(self, step: int, rank: int, world_size: int, accumulation: int) -> list[torch.Tensor]:
        """This rank's micro-batches for ``step`` (``global_batch`` must be divisible by
        ``world_size``; micro-batch sizes differ by at most one image)."""
        rank_slice = torch.tensor_split(self.global_indices(step), world_size)[rank]
        return list(torch.tensor_split(rank_slice, accumulation))

    def micro_batch_positions(self, step: int, rank: int, world_size: int, accumulation: int) -> list[torch.Tensor]:
        """The stream positions of :meth:`micro_batches`' images (``step * B`` + place in the global
        batch): unique over the whole run and independent of ``world_size`` and ``accumulation``,
        so augmentation seeded by them gives the same images however the batch is split."""
        start = step * self.global_batch
        rank_slice = torch.tensor_split(torch.arange(start, start + self.global_batch), world_size)[rank]
        return list(torch.tensor_split(rank_slice, accumulation))


def shard_indices(num_images: int, rank: int, world_size: int) -> torch.Tensor:
    """Evaluation shard: rank r takes r, r + W, r + 2W ... Disjoint, and together complete,
    so top-1 summed over ranks counts every test image exactly once."""
    return torch.arange(rank, max(rank, num_images), world_size)  # empty when rank >= num_images
