"""Stateless decisions: the (index, crop box, flip, side) stream is the same on any number of ranks,
after a resume at any step, and is what the loader decodes; progressive resizing keyed to the step."""

import io
import os
import socket

import pytest
import torch

from largebatch.data import training_batches
from largebatch.data.decisions import step_decisions, step_size
from largebatch.data.prepare import Tier, prepare
from largebatch.data.resolution import ResolutionSchedule, build_schedule
from largebatch.data.sampler import StreamSampler
from largebatch.data.shards import ShardDataset
from largebatch.data.transforms import train_transform
from largebatch.errors import ConfigError

GLOBAL_BATCH = 12  # divisible by 1, 2, 3 and 4 ranks


def prepared_dataset(root, helpers, size=24, schedule=None):
    source = helpers.write_imagenet(root / "src", classes=("n01", "n02", "n03"), train_per_class=9,
                                    val_per_class=1, size=(60, 44))
    # a few other shapes, so that crop boxes depend on the image
    for i, shape in enumerate([(40, 64), (90, 30), (33, 33)]):
        (source / "train" / "n02" / f"n02_{i}.JPEG").write_bytes(helpers.jpeg_bytes(helpers.natural_image(*shape, i)))
    prepare(source, root / "out", [Tier("originals")], images_per_shard=8, processes=1, stream=io.StringIO())
    dataset = ShardDataset(root / "out" / "originals", "train", train_transform("extended", size), seed=7)
    dataset.resolution = schedule
    return dataset


def global_stream(dataset, sampler, steps, world_size, accumulation=1):
    """For each step: the decisions of all ranks together, rank 0 first (the pure function)."""
    return [[d for rank in range(world_size)
             for micro in step_decisions(dataset, sampler, step, rank, world_size, accumulation) for d in micro]
            for step in steps]


def loaded_stream(dataset, sampler, start, stop, world_size, accumulation=1, workers=0):
    """The same, from what the loader actually decoded, each rank's stream resumed at ``start``."""
    per_rank = []
    for rank in range(world_size):
        stream = training_batches(dataset, sampler, start, stop, rank, world_size, accumulation, workers=workers)
        steps = []
        for micro_batches in stream:
            assert all(images.shape[-1] == stream.decisions[0][0].size for images, _ in micro_batches)
            steps.append([d for micro in stream.decisions for d in micro])
        per_rank.append(steps)
    return [[d for rank in range(world_size) for d in per_rank[rank][step]] for step in range(stop - start)]


def test_the_decision_stream_does_not_depend_on_the_number_of_ranks(tmp_path, helpers):
    dataset = prepared_dataset(tmp_path, helpers)
    sampler = StreamSampler(len(dataset), GLOBAL_BATCH, seed=7)
    steps = range(9)  # 4 epochs of 27 images: crosses epoch boundaries mid-batch
    reference = global_stream(dataset, sampler, steps, 1)
    assert len(reference[0]) == GLOBAL_BATCH and len({d.box for step in reference for d in step}) > 50
    assert {d.flip for step in reference for d in step} == {True, False}
    for world_size in (2, 3, 4):
        for accumulation in (1, 3):
            assert global_stream(dataset, sampler, steps, world_size, accumulation) == reference
    other_seed = StreamSampler(len(dataset), GLOBAL_BATCH, seed=8)
    assert global_stream(dataset, other_seed, steps, 1) != reference


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_a_resume_on_any_number_of_ranks_decodes_the_uninterrupted_stream(tmp_path, helpers, world_size):
    schedule = ResolutionSchedule(16, 24, ramp_start=1, ramp_end=2, multiple=8)
    dataset = prepared_dataset(tmp_path, helpers, schedule=schedule)
    sampler = StreamSampler(len(dataset), GLOBAL_BATCH, seed=7)
    never_stopped = loaded_stream(dataset, sampler, 0, 8, 1)
    k = 3
    resumed = loaded_stream(dataset, sampler, k, 8, world_size, workers=1 if world_size == 2 else 0)
    assert resumed == never_stopped[k:]
    assert never_stopped == global_stream(dataset, sampler, range(8), 1)
    assert sorted({d.size for step in never_stopped for d in step}) == [16, 24]


def test_ffcv_progressive_resizing_values():
    # libffcv/ffcv-imagenet rn50_88_epochs.yaml: min_res 160, max_res 192, start_ramp 65, end_ramp 76
    schedule = build_schedule(192, 160, [65, 76])
    sides = [schedule.at_epoch(e) for e in range(88)]
    assert sides[:71] == [160] * 71  # 160 through epoch 70 (interpolated 174.5 rounds down to 160)
    assert sides[71:] == [192] * 17  # from epoch 71 (177.5 rounds up to 192)
    ramp = ResolutionSchedule(128, 256, ramp_start=0, ramp_end=4)
    assert [ramp.at_epoch(e) for e in range(6)] == [128, 160, 192, 224, 256, 256]
    assert build_schedule(224, 0, []) is None
    with pytest.raises(ConfigError, match="two epochs"):
        build_schedule(192, 160, [65])
    with pytest.raises(ConfigError, match="resolution_start"):
        build_schedule(160, 192, [1, 2])


def test_the_side_of_a_step_is_that_of_the_epoch_of_its_first_image():
    class Fake:
        image_size = 24
        resolution = ResolutionSchedule(16, 24, ramp_start=1, ramp_end=2, multiple=8)
    sampler = StreamSampler(100, 30, seed=0)
    # step 3 covers positions 90-119: it starts in epoch 0 and keeps 16 px; step 4 starts in epoch 1
    assert [step_size(Fake, sampler, s) for s in range(8)] == [16, 16, 16, 16, 16, 16, 16, 24]
    Fake.resolution = None
    assert step_size(Fake, sampler, 5) == 24


def _resume_worker(rank, world_size, port, root, start, stop, queue):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    dataset = ShardDataset(os.path.join(root, "out", "originals"), "train", train_transform("extended", 24), seed=7)
    dataset.resolution = ResolutionSchedule(16, 24, ramp_start=1, ramp_end=2, multiple=8)
    sampler = StreamSampler(len(dataset), GLOBAL_BATCH, seed=7)
    stream = training_batches(dataset, sampler, start, stop, rank, world_size, 1, workers=1)
    mine = []
    for _ in stream:
        mine.append([tuple(d) for micro in stream.decisions for d in micro])
    gathered = [None] * world_size
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        queue.put([[d for r in range(world_size) for d in gathered[r][step]] for step in range(stop - start)])
    dist.destroy_process_group()


@pytest.mark.slow
def test_resume_across_rank_counts_with_gloo(tmp_path, helpers):
    """Real processes (gloo): resumed at step k on 1, 2, 3 or 4 ranks, the decisions of steps k..k+n
    gathered from all ranks equal those of a run that never stopped."""
    import torch.multiprocessing as mp
    dataset = prepared_dataset(tmp_path, helpers, schedule=ResolutionSchedule(16, 24, 1, 2, multiple=8))
    sampler = StreamSampler(len(dataset), GLOBAL_BATCH, seed=7)
    never_stopped = [[tuple(d) for d in step] for step in loaded_stream(dataset, sampler, 0, 10, 1)]
    context = mp.get_context("spawn")
    k = 4
    for world_size in (1, 2, 3, 4):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        queue = context.Queue()
        processes = [context.Process(target=_resume_worker, args=(rank, world_size, port, str(tmp_path), k, 10, queue))
                     for rank in range(world_size)]
        for process in processes:
            process.start()
        resumed = queue.get(timeout=300)
        for process in processes:
            process.join(timeout=60)
        assert resumed == never_stopped[k:], f"{world_size} ranks"
