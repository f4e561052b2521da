"""Stateless augmentation decisions: which image, crop box, flip and side each slot of a step gets.

Every decision is a pure function of the run seed and the *stream position* of the slot,
``p = step * B + place in the global batch`` (:mod:`largebatch.data.sampler`), plus the stored
image's width and height (from the shard index or the JPEG header):

- image index: the sampler's epoch permutation of ``(seed, epoch)`` at ``p mod N``;
- crop box and flip (and colour factors): the transform's draw from ``image_rng(seed, p)``;
- side: the step's, from the progressive-resizing schedule (:mod:`largebatch.data.resolution`).

Keying on the stream position rather than on (seed, epoch, index) gives the same thing for a
clean data set (``p`` and (epoch, index) determine each other through the permutation), and
two things more: the side needs the step, which the position carries (``p // B``); and when
an unreadable image's slot is filled by the next readable image, the slot keeps its own random
choices. Nothing depends on the rank, the number of ranks, the accumulation split, the
worker count or the decode backend, so a run resumed at step k on any number of processes
sees exactly what the uninterrupted run saw.
"""

from __future__ import annotations

from largebatch.data.files import Decision
from largebatch.data.sampler import StreamSampler
from largebatch.data.transforms import image_rng


def step_size(dataset, sampler: StreamSampler, step: int) -> int:
    """The output side of every image of optimizer ``step``: the data set's progressive-resizing
    schedule (``dataset.resolution``) at the step, or its transform's fixed side."""
    schedule = getattr(dataset, "resolution", None)
    if schedule is None:
        return dataset.image_size
    return schedule.at_step(step, sampler.global_batch, sampler.num_images)


def step_decisions(dataset, sampler: StreamSampler, step: int, rank: int, world_size: int,
                   accumulation: int) -> list[list[Decision]]:
    """The decisions for this rank's micro-batches of ``step``, computed without decoding
    anything (image sizes from ``dataset.dimensions``). Concatenated over ranks in rank order,
    the same list for any ``world_size`` and ``accumulation``; it is what the loader decodes
    when no image is unreadable."""
    size = step_size(dataset, sampler, step)
    out = []
    for indices, positions in zip(sampler.micro_batches(step, rank, world_size, accumulation),
                                  sampler.micro_batch_positions(step, rank, world_size, accumulation)):
        micro_batch = []
        for index, position in zip(indices.tolist(), positions.tolist()):
            width, height = dataset.dimensions(index)
            params = dataset.transform.sample(width, height, image_rng(dataset.seed, position), size)
            micro_batch.append(Decision(index, position, params.box, params.flip, size))
        out.append(micro_batch)
    return out
