"""Image-file data sets: batches, bad files skipped and counted, workers, determinism, resume."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from largebatch.data import (ImageFileDataset, Normalizer, SkippedFiles, build_datasets, load_batches,
                             skipped_files_all_ranks, training_batches)
from largebatch.data import files as files_module
from largebatch.data.sampler import StreamSampler, shard_indices
from largebatch.data.transforms import eval_transform, image_rng, train_transform
from largebatch.errors import DataError


def dataset_of(root, helpers, level="extended", size=24, count=12, seed=0):
    paths = helpers.write_tree(root, {"n01": count // 2, "n02": count - count // 2})
    names = [str(p.relative_to(root)) for p in paths]
    labels = [0] * (count // 2) + [1] * (count - count // 2)
    transform = train_transform(level, size) if level != "eval" else eval_transform(size)
    return ImageFileDataset(root, names, labels, transform, seed=seed), paths


def test_batches_are_uint8_nchw_in_channels_last_layout(tmp_path, helpers):
    dataset, _ = dataset_of(tmp_path, helpers)
    batch = dataset.load_batch([0, 7, 3], positions=[10, 11, 12])
    assert batch.images.shape == (3, 3, 24, 24) and batch.images.dtype == torch.uint8
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert batch.labels.tolist() == [0, 1, 0] and batch.skipped == [] and batch.error is None
    # slot 1 is image 7 with the random choices of stream position 11
    with files_module.Image.open(dataset.path(7)) as image:
        expected = dataset.transform(image, image_rng(0, 11))
    assert np.array_equal(batch.images[1].permute(1, 2, 0).numpy(), expected)


def test_normalizer_accepts_channels_last_uint8(tmp_path, helpers):
    dataset, _ = dataset_of(tmp_path, helpers, level="eval")
    images, _ = dataset.batch(torch.tensor([0, 1]))
    out = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))(images)
    expected = (images.contiguous().float() / 255 - 0.5) / 0.25
    assert torch.allclose(out, expected, atol=1e-5) and out.is_contiguous()


def test_training_replaces_unreadable_files_and_counts_them(tmp_path, helpers, capsys):
    dataset, paths = dataset_of(tmp_path, helpers)
    helpers.corrupt(paths[2])
    helpers.truncate(paths[3])
    batch = dataset.load_batch([2, 3, 5], positions=[0, 1, 2])
    # slot 0: image 2 unreadable, 3 truncated, 4 fine -> image 4 with position 0's choices
    assert len(batch.labels) == 3
    assert [p for p, _ in batch.skipped] == [str(paths[2]), str(paths[3]), str(paths[3])]
    with files_module.Image.open(dataset.path(4)) as image:
        expected = dataset.transform(image, image_rng(0, 0))
    assert np.array_equal(batch.images[0].permute(1, 2, 0).numpy(), expected)
    assert "truncated" in batch.skipped[1][1].lower()

    stream = training_batches(dataset, StreamSampler(len(dataset), 6, seed=1), 0, 4, 0, 1, 2)
    steps = list(stream)
    assert all(len(images) == 3 for step in steps for images, _ in step)  # batch sizes unchanged
    assert sorted(path for path, _ in stream.skipped) == sorted([str(paths[2]), str(paths[3])])
    assert "truncated" in dict(stream.skipped)[str(paths[3])].lower()
    warnings = capsys.readouterr().err
    assert warnings.count("skipped unreadable image") == 2  # once per file, though each epoch hits it
    assert str(paths[2]) in warnings and str(paths[3]) in warnings


def test_evaluation_leaves_unreadable_files_out(tmp_path, helpers, capsys):
    dataset, paths = dataset_of(tmp_path, helpers, level="eval", count=6)
    helpers.truncate(paths[1])
    evaluation = load_batches(dataset, torch.arange(6).split(2))
    batches = list(evaluation)
    assert [len(labels) for _, labels in batches] == [1, 2, 2]
    assert [path for path, _ in evaluation.skipped] == [str(paths[1])]
    helpers.corrupt(paths[0])
    run_skipped = SkippedFiles()
    for _ in range(2):  # two evaluations of one run: each lists what it left out, the run warns once per file
        evaluation = load_batches(dataset, torch.arange(6).split(2), skipped=run_skipped)
        assert [len(labels) for _, labels in evaluation] == [2, 2]  # the empty batch is dropped
        assert sorted(path for path, _ in evaluation.skipped) == sorted([str(paths[0]), str(paths[1])])
    assert run_skipped.paths() == sorted([str(paths[0]), str(paths[1])])
    assert capsys.readouterr().err.count("skipped unreadable image") == 1 + 2  # first pass alone, then the run


def test_a_run_of_unreadable_files_is_a_one_line_data_error(tmp_path, helpers):
    dataset, paths = dataset_of(tmp_path, helpers, count=4)
    for path in paths:
        helpers.corrupt(path)
    stream = training_batches(dataset, StreamSampler(4, 2, seed=0), 0, 1, 0, 1, 1)
    with pytest.raises(DataError, match="are all unreadable; check the data set") as error:
        next(stream)
    assert "\n" not in str(error.value)


def step_images(stream):
    return [torch.cat([images for images, _ in step]) for step in stream]


def test_resumed_stream_sees_the_same_augmented_images(tmp_path, helpers):
    dataset, _ = dataset_of(tmp_path, helpers, count=10)
    full = step_images(training_batches(dataset, StreamSampler(10, 4, seed=3), 0, 8, 0, 1, 1))
    resumed = step_images(training_batches(dataset, StreamSampler(10, 4, seed=3), 5, 8, 0, 1, 1))
    assert all(torch.equal(a, b) for a, b in zip(full[5:], resumed))
    assert not torch.equal(full[0], full[5])  # different images or different augmentation
    other_seed = ImageFileDataset(dataset.folder, [f.decode() for f in dataset.files], dataset.labels,
                                  dataset.transform, seed=4)
    assert not torch.equal(full[0], step_images(training_batches(
        other_seed, StreamSampler(10, 4, seed=3), 0, 1, 0, 1, 1))[0])


def test_augmentation_is_the_same_for_any_split_of_the_global_batch(tmp_path, helpers):
    dataset, _ = dataset_of(tmp_path, helpers, count=10)
    sampler = StreamSampler(10, 6, seed=0)
    one_process = step_images(training_batches(dataset, sampler, 0, 3, 0, 1, 2))
    three_processes = [step_images(training_batches(dataset, sampler, 0, 3, rank, 3, 1)) for rank in range(3)]
    for step in range(3):
        assert torch.equal(one_process[step], torch.cat([rank[step] for rank in three_processes]))


def test_worker_processes_give_the_same_batches_as_none(tmp_path, helpers):
    dataset, paths = dataset_of(tmp_path, helpers, count=10)
    helpers.corrupt(paths[4])
    in_process = step_images(training_batches(dataset, StreamSampler(10, 4, seed=2), 0, 6, 0, 1, 2, workers=0))
    stream = training_batches(dataset, StreamSampler(10, 4, seed=2), 0, 6, 0, 1, 2, workers=2)
    workers = step_images(stream)
    assert len(workers) == 6 and all(torch.equal(a, b) for a, b in zip(in_process, workers))
    assert [path for path, _ in stream.skipped] == [str(paths[4])]  # reported back from the workers
    evaluated = list(load_batches(dataset, torch.arange(10).split(3), workers=2))
    assert sum(len(labels) for _, labels in evaluated) == 9


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_sharded_evaluation_counts_each_image_once(tmp_path, helpers, world_size):
    dataset, _ = dataset_of(tmp_path, helpers, level="eval", count=7)
    labels = torch.cat([labels for rank in range(world_size)
                        for _, labels in load_batches(dataset, shard_indices(7, rank, world_size).split(2))])
    assert sorted(labels.tolist()) == sorted(dataset.labels.tolist()) and len(labels) == 7


def data_config(**values):
    defaults = dict(dataset="imagenet", data_dir="", image_size=0, num_classes=0, augmentation="extended",
                    workers=0, train_subset=0, synthetic_images=100, color_jitter=0.4, lighting=0.1,
                    fast_decode=True)
    return SimpleNamespace(**{**defaults, **values})


def test_build_datasets_for_imagenet(tmp_path, helpers):
    helpers.write_imagenet(tmp_path, classes=("n03", "n01", "n02"), train_per_class=4, val_per_class=2)
    train, test, info = build_datasets(data_config(data_dir=str(tmp_path), image_size=32), seed=5)
    assert (info.num_classes, info.channels, info.image_size, info.train_images, info.test_images) == (3, 3, 32, 12, 6)
    assert info.mean == (0.485, 0.456, 0.406)
    assert train.transform.crop == "random-resized" and test.transform.crop == "center" and train.seed == 5
    images, labels = test.batch(torch.arange(6))
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    subset, _, _ = build_datasets(data_config(data_dir=str(tmp_path), train_subset=5), seed=5)
    assert len(subset) == 5 and set(subset.files.tolist()) <= set(train.files.tolist())
    assert subset.image_size == 224  # the default for ImageNet
    with pytest.raises(DataError, match="num_classes is 1000 but imagenet has 3 classes"):
        build_datasets(data_config(data_dir=str(tmp_path), num_classes=1000))
    with pytest.raises(DataError, match="missing train split"):
        build_datasets(data_config(data_dir=str(tmp_path / "val")))


def test_synthetic_data():
    train, test, info = build_datasets(data_config(dataset="synthetic", image_size=16, num_classes=7,
                                                   synthetic_images=50), seed=0)
    assert (len(train), len(test), info.num_classes, info.channels) == (50, 5, 7, 3)
    images, labels = train.batch(torch.tensor([0, 1, 49]))
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 0]


def test_restored_skipped_files_count_without_a_second_warning(tmp_path, helpers, capsys):
    dataset, paths = dataset_of(tmp_path, helpers, count=6)
    helpers.corrupt(paths[1])
    helpers.corrupt(paths[2])
    before = ["/data/a.JPEG", (str(paths[1]), "OSError: broken")]  # as a checkpoint keeps them
    stream = training_batches(dataset, StreamSampler(6, 6, seed=0), 0, 1, 0, 1, 1, skipped=before)
    assert [path for path, _ in stream.skipped] == ["/data/a.JPEG", str(paths[1])]
    next(stream)
    assert [path for path, _ in stream.skipped] == ["/data/a.JPEG", str(paths[1]), str(paths[2])]
    err = capsys.readouterr().err
    assert err.count("skipped unreadable image") == 1 and str(paths[2]) in err and "3 skipped so far" in err
    assert skipped_files_all_ranks(stream.skipped + ["/data/z.JPEG"]) == sorted(
        ["/data/a.JPEG", "/data/z.JPEG", str(paths[1]), str(paths[2])])
    fresh = training_batches(dataset, StreamSampler(6, 6, seed=0), 0, 1, 0, 1, 1)
    assert fresh.skipped == []  # nothing is shared between streams


def _gather_worker(rank, world_size, port, queue):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    local = SkippedFiles([(f"/data/rank{rank}.JPEG", "x"), ("/data/shared.JPEG", "x")])
    queue.put((rank, skipped_files_all_ranks(local.entries())))
    dist.destroy_process_group()


@pytest.mark.slow
def test_skipped_files_are_united_over_ranks():
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_gather_worker, args=(rank, 2, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    expected = ["/data/rank0.JPEG", "/data/rank1.JPEG", "/data/shared.JPEG"]
    assert results == {0: expected, 1: expected}
