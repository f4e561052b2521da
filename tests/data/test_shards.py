"""Prepared data sets: the tar layout, the index, reading by index, damage, resume of prepare."""

import hashlib
import io
import json
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from largebatch.cli import main
from largebatch.data import ImageFileDataset, build_datasets, imagenet, training_batches
from largebatch.data import prepare as prepare_module
from largebatch.data.prepare import Tier, parse_tiers, prepare
from largebatch.data.sampler import StreamSampler
from largebatch.data.shards import (MANIFEST, ShardDataset, find_prepared, index_name, load_manifest, shard_name,
                                    verify)
from largebatch.data.transforms import eval_transform, train_transform
from largebatch.errors import ConfigError, DataError


def source_tree(root, helpers, train_per_class=5, val_per_class=2, size=(64, 48)):
    return helpers.write_imagenet(root, classes=("n01", "n02", "n03"), train_per_class=train_per_class,
                                  val_per_class=val_per_class, size=size)


def prepared(tmp_path, helpers, tiers="originals", images_per_shard=4, **tree):
    source = source_tree(tmp_path / "src", helpers, **tree)
    prepare(source, tmp_path / "out", parse_tiers(tiers), images_per_shard=images_per_shard, processes=1,
            stream=io.StringIO())
    return source, tmp_path / "out"


def tree_digest(folder):
    """SHA-256 of every file under ``folder`` except the resume records, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "parts" not in p.parts}


def test_shards_are_tar_files_in_webdataset_layout_with_an_index(tmp_path, helpers):
    source, out = prepared(tmp_path, helpers)
    tier = out / "originals"
    manifest = load_manifest(tier)
    assert manifest["classes"] == ["n01", "n02", "n03"] and manifest["tier"]["kind"] == "originals"
    train = manifest["splits"]["train"]
    assert train["images"] == 15 and [s["name"] for s in train["shards"]] == [shard_name("train", k) for k in range(4)]
    index = np.load(tier / index_name("train"))
    listing = imagenet.list_split(source, "train", use_cache=False)
    for number, shard in enumerate(train["shards"]):
        path = tier / shard["name"]
        assert path.stat().st_size == shard["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        with tarfile.open(path) as archive:  # what webdataset's tar reader sees: <key>.jpg then <key>.cls
            members = archive.getmembers()
            names = [m.name for m in members]
            keys = [n.split(".")[0] for n in names]
            assert keys[0::2] == keys[1::2] and all(n.endswith(".jpg") for n in names[0::2])
            assert all(n.endswith(".cls") for n in names[1::2])
            rows = index[index["shard"] == number]
            assert [m.offset_data for m in members[0::2]] == rows["offset"].tolist()
            assert [int(archive.extractfile(m).read()) for m in members[1::2]] == rows["label"].tolist()
    # originals: the very bytes of the source files, in the folder's order, with their sizes
    data = path.read_bytes()
    last = index[-1]
    assert data[last["offset"]:last["offset"] + last["size"]] == (source / "train" / listing.files[-1]).read_bytes()
    assert index["label"].tolist() == listing.labels.tolist()
    assert (index["width"] == 64).all() and (index["height"] == 48).all() and index["gpu"].all()
    assert json.loads((tier / "train.names.json").read_text()) == listing.files


def test_reading_by_index_gives_the_batches_of_the_folder(tmp_path, helpers):
    source, out = prepared(tmp_path, helpers)
    listing = imagenet.list_split(source, "train", use_cache=False)
    for transform in (train_transform("extended", 24), eval_transform(24)):
        folder = ImageFileDataset(listing.folder, listing.files, listing.labels, transform, seed=3)
        shards = ShardDataset(out / "originals", "train", transform, seed=3)
        indices, positions = [14, 0, 7, 3, 3], [100, 101, 102, 103, 104]
        expected, got = folder.load_batch(indices, positions), shards.load_batch(indices, positions)
        assert torch.equal(expected.images, got.images) and torch.equal(expected.labels, got.labels)
        assert expected.decisions == got.decisions and len(got.decisions) == 5
        assert shards.dimensions(7) == folder.dimensions(7) == (64, 48)
    subset = shards.subset([2, 9])
    assert torch.equal(subset.load_batch([1]).images, shards.load_batch([9]).images)


def test_bad_source_files_are_left_out_and_listed(tmp_path, helpers):
    source = source_tree(tmp_path / "src", helpers)
    helpers.corrupt(source / "train" / "n02" / "n02_1.JPEG")
    helpers.truncate(source / "val" / "n01" / "n01_0.JPEG")
    log = io.StringIO()
    manifests = prepare(source, tmp_path / "out", [Tier("originals")], images_per_shard=4, processes=1, stream=log)
    splits = manifests["originals"]["splits"]
    assert splits["train"]["images"] == 14 and splits["val"]["images"] == 5
    assert [name for name, _ in splits["train"]["skipped"]] == ["n02/n02_1.JPEG"]
    assert [name for name, _ in splits["val"]["skipped"]] == ["n01/n01_0.JPEG"]
    assert "truncated" in splits["val"]["skipped"][0][1].lower()
    assert log.getvalue().count("skipped unreadable image") == 2 and "BytesIO" not in log.getvalue()
    names = json.loads((tmp_path / "out" / "originals" / "train.names.json").read_text())
    assert "n02/n02_1.JPEG" not in names and len(names) == 14


def test_reencoded_tiers_have_the_stated_sides(tmp_path, helpers):
    source = source_tree(tmp_path / "src", helpers, train_per_class=2, val_per_class=1)
    small = source / "train" / "n01" / "n01_0.JPEG"  # already within every limit: copied unchanged
    small.write_bytes(helpers.jpeg_bytes(helpers.natural_image(30, 20, seed=9)))
    prepare(source, tmp_path / "out", parse_tiers("short32,max40", quality=80), images_per_shard=8, processes=1,
            stream=io.StringIO())
    short = ShardDataset(tmp_path / "out" / "short32-q80", "train", eval_transform(16))
    longest = ShardDataset(tmp_path / "out" / "max40-q80", "train", eval_transform(16))
    assert load_manifest(tmp_path / "out" / "short32-q80")["tier"] == {"name": "short32-q80", "kind": "short",
                                                                      "side": 32, "quality": 80}
    assert short.dimensions(0) == longest.dimensions(0) == (30, 20)
    assert short.read_bytes(0) == small.read_bytes()
    assert [short.dimensions(i) for i in range(1, 6)] == [(43, 32)] * 5  # 64x48 -> shorter side 32
    assert [longest.dimensions(i) for i in range(1, 6)] == [(40, 30)] * 5  # longer side 40
    with Image.open(io.BytesIO(short.read_bytes(3))) as image:
        assert image.format == "JPEG" and image.size == (43, 32)


def test_tier_names_and_bad_tiers():
    assert [t.name for t in parse_tiers("originals, short256,max512", quality=85)] == \
        ["originals", "short256-q85", "max512-q85"]
    for bad in ("short", "min256", "originals,originals", "short8", ""):
        with pytest.raises(ConfigError, match="--tiers"):
            parse_tiers(bad)
    with pytest.raises(ConfigError, match="--quality"):
        parse_tiers("short256", quality=0)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (a BaseException passes every ``except Exception``)."""


def test_a_killed_prepare_resumes_and_ends_with_the_same_files(tmp_path, helpers, monkeypatch):
    source = source_tree(tmp_path / "src", helpers)
    tiers = parse_tiers("originals,short32")
    prepare(source, tmp_path / "reference", tiers, images_per_shard=3, processes=1, stream=io.StringIO())

    original, calls, kill = prepare_module.write_shard, [], [True]

    def killed_after_three(job):
        calls.append((job.split, job.number))
        if len(calls) == 4 and kill[0]:  # killed while writing the fourth shard: its temporary files stay behind
            for tier in job.tiers:
                (tmp_path / "out" / tier.name / f".{shard_name(job.split, job.number)}.999.partial").write_bytes(b"x")
            raise Killed
        return original(job)

    monkeypatch.setattr(prepare_module, "write_shard", killed_after_three)
    with pytest.raises(Killed):
        prepare(source, tmp_path / "out", tiers, images_per_shard=3, processes=1, stream=io.StringIO())
    assert not (tmp_path / "out" / "originals" / MANIFEST).exists()
    with pytest.raises(DataError, match="did not finish.*run the same `largebatch prepare` again"):
        find_prepared(tmp_path / "out" / "originals")

    calls.clear()
    kill[0] = False
    log = io.StringIO()
    prepare(source, tmp_path / "out", tiers, images_per_shard=3, processes=1, stream=log)
    assert "resuming, 3/" in log.getvalue()
    assert calls == [("train", 3), ("train", 4), ("val", 0), ("val", 1)]  # only the unfinished shards
    for tier in tiers:
        assert tree_digest(tmp_path / "out" / tier.name) == tree_digest(tmp_path / "reference" / tier.name)
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_parallel_prepare_writes_the_same_files(tmp_path, helpers):
    source = source_tree(tmp_path / "src", helpers)
    prepare(source, tmp_path / "one", [Tier("originals")], images_per_shard=4, processes=1, stream=io.StringIO())
    prepare(source, tmp_path / "two", [Tier("originals")], images_per_shard=4, processes=2, stream=io.StringIO())
    assert tree_digest(tmp_path / "one" / "originals") == tree_digest(tmp_path / "two" / "originals")


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_shard_is_a_one_line_error_naming_it(tmp_path, helpers):
    _, out = prepared(tmp_path, helpers)
    tier = out / "originals"
    index = np.load(tier / index_name("train"))
    entry = index[5]
    shard = tier / shard_name("train", int(entry["shard"]))
    flip_byte(shard, int(entry["offset"]) + 300)
    dataset = ShardDataset(tier, "train", train_transform("extended", 16))
    stream = training_batches(dataset, StreamSampler(len(dataset), 15, seed=0), 0, 1, 0, 1, 1)
    with pytest.raises(DataError, match="damaged shard") as error:
        next(stream)
    message = str(error.value)
    assert str(shard) in message and "\n" not in message and "CRC-32" in message
    with pytest.raises(DataError, match="damaged shard"):
        verify(tier)
    # a shard cut short, and a missing one
    data = shard.read_bytes()
    shard.write_bytes(data[:-1024])
    with pytest.raises(DataError, match=f"{shard}: damaged shard: .* bytes"):
        ShardDataset(tier, "train", eval_transform(16)).batch(torch.tensor([5]))
    shard.unlink()
    with pytest.raises(DataError, match="missing shard"):
        ShardDataset(tier, "train", eval_transform(16)).batch(torch.tensor([5]))


def test_prepare_verify_on_the_command_line(tmp_path, helpers, capsys):
    _, out = prepared(tmp_path, helpers)
    assert main(["prepare", "--verify", str(out / "originals")]) == 0
    assert "6 shards" in capsys.readouterr().out
    flip_byte(out / "originals" / shard_name("val", 0), 700)
    assert main(["prepare", "--verify", str(out / "originals")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("largebatch: error:") and "val-000000.tar: damaged shard" in err and "\n" not in err


def data_config(**values):
    defaults = dict(dataset="imagenet", data_dir="", image_size=16, num_classes=0, augmentation="extended",
                    workers=0, train_subset=0, synthetic_images=100, color_jitter=0.4, lighting=0.1,
                    fast_decode=True, decode="auto", cache_dir="", resolution_start=0, resolution_ramp=[],
                    eval_image_size=0)
    return SimpleNamespace(**{**defaults, **values})


def test_build_datasets_finds_a_prepared_folder(tmp_path, helpers):
    _, out = prepared(tmp_path, helpers, tiers="originals,max40")
    with pytest.raises(DataError, match="holds 2 prepared tiers \\(max40-q90, originals\\): give one"):
        build_datasets(data_config(data_dir=str(out)))
    train, test, info = build_datasets(data_config(data_dir=str(out / "originals"), train_subset=10), seed=1)
    assert isinstance(train, ShardDataset) and isinstance(test, ShardDataset)
    assert (info.num_classes, info.train_images, info.test_images) == (3, 10, 6)
    assert test.batch(torch.arange(6))[1].tolist() == [0, 0, 1, 1, 2, 2]


def test_a_missing_index_is_a_one_line_error(tmp_path, helpers):
    _, out = prepared(tmp_path, helpers)
    tier = out / "originals"
    (tier / index_name("train")).unlink()
    with pytest.raises(DataError, match="train.index.npy: missing index") as error:
        build_datasets(data_config(data_dir=str(tier)))
    assert "\n" not in str(error.value)
    (tier / MANIFEST).unlink()
    with pytest.raises(DataError, match=f"tar shards but no index \\({MANIFEST}\\)"):
        build_datasets(data_config(data_dir=str(tier)))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["splits"]["train"]["shards"][0].update(name="../../etc/passwd"), "shard entry 0 of split 'train'"),
    (lambda m: m["splits"]["train"]["shards"][1].update(bytes=10), "points past the end of its shard"),
    (lambda m: m.update(classes=["n01", "n02"]), "a label outside the class map"),
    (lambda m: m.update(version=99), "version 99"),
    (lambda m: m["splits"]["val"].update(images=7), "7"),
])
def test_a_tampered_manifest_is_refused(tmp_path, helpers, edit, message):
    _, out = prepared(tmp_path, helpers)
    tier = out / "originals"
    manifest = json.loads((tier / MANIFEST).read_text())
    edit(manifest)
    (tier / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=message):
        for split in ("train", "val"):
            ShardDataset(tier, split, eval_transform(16))


def test_the_node_local_cache_holds_checked_copies(tmp_path, helpers):
    _, out = prepared(tmp_path, helpers)
    tier, cache = out / "originals", tmp_path / "cache"
    dataset = ShardDataset(tier, "train", eval_transform(16), cache_dir=str(cache))
    reference = ShardDataset(tier, "train", eval_transform(16))
    assert torch.equal(dataset.batch(torch.arange(15))[0], reference.batch(torch.arange(15))[0])
    copies = sorted(p.name for p in cache.rglob("*.tar"))
    assert copies == [shard_name("train", k) for k in range(4)]
    for copy in cache.rglob("*.tar"):
        assert copy.read_bytes() == (tier / copy.name).read_bytes()
    # a damaged original is not copied
    flip_byte(tier / shard_name("val", 1), 100)
    damaged = ShardDataset(tier, "val", eval_transform(16), cache_dir=str(cache))
    with pytest.raises(DataError, match="val-000001.tar: damaged shard \\(its SHA-256"):
        damaged.batch(torch.tensor([5]))
    assert not list(cache.rglob("val-000001.tar")) and not list(cache.rglob("*.partial"))


@pytest.mark.slow
def test_a_prepare_killed_with_sigkill_resumes(tmp_path, helpers, cli_env):
    """A real ``largebatch prepare`` process killed (SIGKILL) after a few shards, then run again."""
    import os
    import signal
    import subprocess
    import sys
    import time
    source = source_tree(tmp_path / "src", helpers, train_per_class=40, val_per_class=4, size=(500, 375))
    command = [sys.executable, "-m", "largebatch", "prepare", str(source), str(tmp_path / "out"),
               "--tiers", "originals,short128", "--images-per-shard", "3", "--processes", "1"]
    process = subprocess.Popen(command, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "out" / "short128-q90" / "parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("*.json"))) < 3:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = len(list(parts.glob("*.json")))
    assert 3 <= done < 44, "killed too late to test anything"
    result = subprocess.run(command, env=cli_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "resuming, " in result.stderr
    prepare(source, tmp_path / "reference", parse_tiers("originals,short128"), images_per_shard=3, processes=1,
            stream=io.StringIO())
    for tier in ("originals", "short128-q90"):
        assert tree_digest(tmp_path / "out" / tier) == tree_digest(tmp_path / "reference" / tier)
