"""The stream sampler: disjoint and complete shards, deterministic, resumable mid-epoch."""

import pytest
import torch

from largebatch.data import TensorDataset, training_batches
from largebatch.data.sampler import StreamSampler, epoch_permutation, shard_indices


def rank_batches(sampler, step, world_size, accumulation):
    return [sampler.micro_batches(step, rank, world_size, accumulation) for rank in range(world_size)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_one_epoch_is_covered_exactly_once_by_disjoint_rank_slices(world_size, accumulation):
    num_images, batch = 60, 12  # 5 steps per epoch
    sampler = StreamSampler(num_images, batch, seed=3)
    seen = []
    for step in range(5):
        per_rank = [torch.cat(m) for m in rank_batches(sampler, step, world_size, accumulation)]
        assert all(len(r) == batch // world_size for r in per_rank)
        step_images = torch.cat(per_rank)
        assert len(set(step_images.tolist())) == batch  # ranks disjoint within the step
        seen += step_images.tolist()
    assert sorted(seen) == list(range(num_images))  # complete, no duplicates


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_epoch_of_the_stream_is_a_permutation_when_the_batch_does_not_divide_it(world_size):
    num_images, batch = 50, 12  # an epoch is 4.17 steps: batches straddle epochs
    sampler = StreamSampler(num_images, batch, seed=1)
    stream = []
    for step in range(25):  # 300 positions = 6 epochs
        for rank_slices in rank_batches(sampler, step, world_size, 1):
            stream += torch.cat(rank_slices).tolist()
    for epoch in range(6):
        chunk = stream[epoch * num_images:(epoch + 1) * num_images]
        assert sorted(chunk) == list(range(num_images))
        assert chunk == epoch_permutation(num_images, 1, epoch).tolist()


def test_deterministic_per_seed_and_epoch():
    a, b = StreamSampler(100, 20, seed=7), StreamSampler(100, 20, seed=7)
    assert all(torch.equal(a.global_indices(s), b.global_indices(s)) for s in range(12))
    other_seed = StreamSampler(100, 20, seed=8)
    assert not torch.equal(a.global_indices(0), other_seed.global_indices(0))
    assert not torch.equal(epoch_permutation(100, 7, 0), epoch_permutation(100, 7, 1))
    assert torch.equal(epoch_permutation(100, 7, 1), epoch_permutation(100, 7, 1))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_resuming_mid_epoch_gives_the_same_batches(world_size):
    images = torch.arange(90, dtype=torch.uint8).view(90, 1, 1, 1).expand(90, 1, 2, 2).contiguous()
    dataset = TensorDataset(images, torch.arange(90))
    for rank in range(world_size):
        full = list(training_batches(dataset, StreamSampler(90, 24, seed=5), 0, 10, rank, world_size, 2))
        # A new sampler, as after a restart, started at step 4 (epoch 1.07: mid-epoch).
        resumed = list(training_batches(dataset, StreamSampler(90, 24, seed=5), 4, 10, rank, world_size, 2))
        assert len(full) == 10 and len(resumed) == 6
        for a, b in zip(full[4:], resumed):
            assert len(a) == len(b) == 2
            for (images_a, labels_a), (images_b, labels_b) in zip(a, b):
                assert torch.equal(labels_a, labels_b) and torch.equal(images_a, images_b)


def test_processes_and_accumulation_split_the_same_global_batch():
    sampler = StreamSampler(64, 16, seed=2)
    for step in range(6):
        two_ranks = [m for rank in range(2) for m in sampler.micro_batches(step, rank, 2, 1)]
        one_rank_accumulating = sampler.micro_batches(step, 0, 1, 2)
        assert all(torch.equal(a, b) for a, b in zip(two_ranks, one_rank_accumulating))


@pytest.mark.parametrize("world_size,accumulation", [(1, 1), (2, 1), (1, 2), (3, 2)])
def test_stream_positions_are_the_place_in_the_stream(world_size, accumulation):
    sampler = StreamSampler(50, 12, seed=0)
    for step in (0, 4, 9):
        positions = torch.cat([torch.cat(sampler.micro_batch_positions(step, rank, world_size, accumulation))
                               for rank in range(world_size)])
        assert positions.tolist() == list(range(step * 12, step * 12 + 12))
        sizes = [len(p) for rank in range(world_size) for p in sampler.micro_batch_positions(step, rank, world_size,
                                                                                             accumulation)]
        assert sizes == [len(m) for rank in range(world_size) for m in sampler.micro_batches(step, rank, world_size,
                                                                                             accumulation)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_images", [1, 10, 50000 // 997])
def test_evaluation_shards_are_disjoint_and_complete(world_size, num_images):
    shards = [shard_indices(num_images, rank, world_size).tolist() for rank in range(world_size)]
    merged = sorted(i for shard in shards for i in shard)
    assert merged == list(range(num_images))
