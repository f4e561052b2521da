"""ImageNet layouts on disk: class folders, flat val with a labels file, the file-list cache, errors."""

import os
from types import SimpleNamespace

import pytest

from largebatch.data import imagenet
from largebatch.errors import DataError

CSV_HEADER = "ImageId,PredictionString\n"


def test_class_index_is_the_sorted_folder_position(tmp_path, helpers):
    # written out of order; 'a_class' sorts first although created last
    helpers.write_tree(tmp_path / "train", {"n09": 1, "n02": 2, "a_class": 3})
    listing = imagenet.list_split(tmp_path, "train")
    assert listing.classes == ["a_class", "n02", "n09"]
    assert listing.files == ["a_class/a_class_0.JPEG", "a_class/a_class_1.JPEG", "a_class/a_class_2.JPEG",
                             "n02/n02_0.JPEG", "n02/n02_1.JPEG", "n09/n09_0.JPEG"]
    assert listing.labels.tolist() == [0, 0, 0, 1, 1, 2]


def test_validation_uses_the_training_classes(tmp_path, helpers):
    helpers.write_tree(tmp_path / "train", {"n01": 1, "n02": 1, "n03": 1})
    helpers.write_tree(tmp_path / "val", {"n02": 2, "n03": 1, "n07": 1})  # n07: not a training class
    train = imagenet.list_split(tmp_path, "train")
    val = imagenet.list_split(tmp_path, "val", train.classes)
    assert val.files == ["n02/n02_0.JPEG", "n02/n02_1.JPEG", "n03/n03_0.JPEG"]
    assert val.labels.tolist() == [1, 1, 2]


def write_flat_val(root, rows, images, helpers, header=CSV_HEADER):
    (root / "val").mkdir(parents=True)
    for name in images:
        (root / "val" / f"{name}.JPEG").write_bytes(helpers.jpeg_bytes(helpers.natural_image(32, 24)))
    (root / "LOC_val_solution.csv").write_text(header + "".join(f"{a},{b}\n" for a, b in rows))


def test_flat_val_with_the_localisation_labels_file(tmp_path, helpers):
    helpers.write_tree(tmp_path / "train", {"n01": 1, "n02": 1})
    write_flat_val(tmp_path, [("ILSVRC2012_val_00000002", "n02 10 20 30 40 n02 1 2 3 4"),
                              ("ILSVRC2012_val_00000001", "n01 5 5 50 50"),
                              ("ILSVRC2012_val_00000003", "n05 1 1 9 9")],  # a class outside this subset
                   ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002", "ILSVRC2012_val_00000003"], helpers)
    train = imagenet.list_split(tmp_path, "train")
    val = imagenet.list_split(tmp_path, "val", train.classes)
    assert val.files == ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"]
    assert val.labels.tolist() == [0, 1]


def test_labels_file_naming_an_unknown_image_stops_with_the_path(tmp_path, helpers):
    helpers.write_tree(tmp_path / "train", {"n01": 1})
    write_flat_val(tmp_path, [("img_1", "n01 1 1 2 2"), ("img_404", "n01 1 1 2 2")], ["img_1"], helpers)
    with pytest.raises(DataError, match=r"LOC_val_solution.csv: line 3 names image 'img_404', which is not in"):
        imagenet.list_split(tmp_path, "val", ["n01"])


def test_labels_file_problems(tmp_path, helpers):
    helpers.write_tree(tmp_path / "train", {"n01": 1})
    write_flat_val(tmp_path, [("img_1", "")], ["img_1"], helpers)
    with pytest.raises(DataError, match="line 2: no class"):
        imagenet.list_split(tmp_path, "val", ["n01"])
    (tmp_path / "LOC_val_solution.csv").write_text("id,label\nimg_1,n01\n")
    with pytest.raises(DataError, match="expected a CSV header 'ImageId,PredictionString'"):
        imagenet.list_split(tmp_path, "val", ["n01"], use_cache=False)
    (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(DataError, match=r"flat val folder but no labels file \(LOC_val_solution.csv\)"):
        imagenet.list_split(tmp_path, "val", ["n01"])


def test_missing_split_and_empty_class_folder(tmp_path, helpers):
    with pytest.raises(DataError, match=f"{tmp_path / 'train'}: missing train split"):
        imagenet.list_split(tmp_path, "train")
    helpers.write_tree(tmp_path / "train", {"n01": 2})
    (tmp_path / "train" / "n02").mkdir()
    (tmp_path / "train" / "n02" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=f"{tmp_path / 'train' / 'n02'}: empty class folder"):
        imagenet.list_split(tmp_path, "train")
    with pytest.raises(DataError, match="missing val split"):
        imagenet.list_split(tmp_path, "val", ["n01"])


def test_locate(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no data folder given"):
        imagenet.locate("")
    with pytest.raises(DataError, match="is not a folder"):
        imagenet.locate(str(tmp_path / "nowhere"))
    (tmp_path / "imagenet").mkdir()
    monkeypatch.setenv("LARGEBATCH_DATA", str(tmp_path))
    assert imagenet.locate("") == tmp_path / "imagenet"


def test_ilsvrc_distribution_layout(tmp_path, helpers):
    base = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    helpers.write_tree(base / "train", {"n01": 2})
    listing = imagenet.list_split(tmp_path, "train")
    assert listing.folder == base / "train" and len(listing.files) == 2


def test_listing_is_cached_until_a_folder_changes(tmp_path, helpers, monkeypatch):
    helpers.write_tree(tmp_path / "train", {"n01": 2, "n02": 2})
    first = imagenet.list_split(tmp_path, "train")
    cache_files = list((tmp_path / "cache" / "filelists").glob("*.json"))
    assert len(cache_files) == 1

    walked = SimpleNamespace(count=0)
    image_names = imagenet._image_names

    def counting(folder):
        walked.count += 1
        return image_names(folder)

    monkeypatch.setattr(imagenet, "_image_names", counting)
    again = imagenet.list_split(tmp_path, "train")
    assert walked.count == 0  # answered from the cache without listing any class folder
    assert again.files == first.files and again.labels.tolist() == first.labels.tolist()

    # A new image changes n02's modification time: the cache is stale and the folder is walked.
    new = tmp_path / "train" / "n02" / "n02_9.JPEG"
    new.write_bytes(helpers.jpeg_bytes(helpers.natural_image(16, 16)))
    stamp = os.stat(new.parent).st_mtime_ns + 10_000_000  # be independent of timestamp granularity
    os.utime(new.parent, ns=(stamp, stamp))
    updated = imagenet.list_split(tmp_path, "train")
    assert walked.count == 2 and "n02/n02_9.JPEG" in updated.files


def test_a_damaged_cache_file_is_ignored(tmp_path, helpers):
    helpers.write_tree(tmp_path / "train", {"n01": 2})
    imagenet.list_split(tmp_path, "train")
    (cache_file,) = (tmp_path / "cache" / "filelists").glob("*.json")
    cache_file.write_text("{not json")
    assert len(imagenet.list_split(tmp_path, "train").files) == 2
