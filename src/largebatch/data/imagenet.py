"""ImageNet (or any image-folder data set) on disk: finding the files and their labels.

Layouts (ROOT is ``--data-dir``, else ``$LARGEBATCH_DATA/imagenet``):

- ``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*.JPEG`` (the usual one);
- ``ROOT/val/*.JPEG`` flat, with a labels file ``LOC_val_solution.csv`` in ROOT or in ROOT/val:
  CSV ``ImageId,PredictionString`` whose first PredictionString token is the class (wnid), as
  distributed with the ILSVRC localisation data;
- the same under ``ROOT/ILSVRC/Data/CLS-LOC/`` (that distribution's own layout).

Classes are the training split's folder names; class index = position in sorted order, so any
number of classes works (a 10-class subset is just a folder with 10 class folders). Validation
rows or folders of classes absent from the training split are left out (a subset's validation
set is the rows of its classes).

Walking 1.28M files takes minutes on network storage, so a listing is cached as JSON under
``$LARGEBATCH_CACHE`` (default ``~/.cache/largebatch``), keyed by the split folder's path and
valid while the modification times of that folder, of every class folder and of the labels file
are unchanged (adding or removing a file changes its folder's time). Checking costs one
``stat`` per class.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from largebatch.errors import DataError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
LABEL_FILES = ("LOC_val_solution.csv",)
CACHE_VERSION = 1
HOW_TO_GET = ("give --data-dir ROOT with ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG "
              "(or a flat ROOT/val/ plus ROOT/LOC_val_solution.csv); see docs/data.md")


@dataclass
class FileList:
    """The images of one split: paths relative to ``folder``, and their class indices."""
    folder: Path
    files: list[str]
    labels: np.ndarray  # int64
    classes: list[str]


def locate(data_dir: str) -> Path:
    """--data-dir, else $LARGEBATCH_DATA/imagenet."""
    if data_dir:
        root = Path(data_dir)
    elif os.environ.get("LARGEBATCH_DATA"):
        root = Path(os.environ["LARGEBATCH_DATA"]) / "imagenet"
    else:
        raise DataError(f"imagenet: no data folder given: {HOW_TO_GET}")
    if not root.is_dir():
        raise DataError(f"imagenet: {root} is not a folder: {HOW_TO_GET}")
    return root


def split_folder(root: Path, split: str) -> Path:
    for folder in (root / split, root / "ILSVRC" / "Data" / "CLS-LOC" / split):
        if folder.is_dir():
            return folder
    raise DataError(f"{root / split}: missing {split} split: {HOW_TO_GET}")


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _image_names(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if _is_image(e.name) and e.is_file())


def _labels_file(root: Path, folder: Path) -> Path | None:
    for directory in (root, folder):
        for name in LABEL_FILES:
            if (directory / name).is_file():
                return directory / name
    return None


# -------------------------------------------------------------------------------------------
# The cache

def cache_dir() -> Path:
    if os.environ.get("LARGEBATCH_CACHE"):
        return Path(os.environ["LARGEBATCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "largebatch"


def _cache_path(folder: Path) -> Path:
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "filelists" / f"{folder.name}-{key}.json"


def _stamp(folder: Path, class_names: list[str], labels_file: Path | None) -> dict:
    """Modification times that change when files are added, removed or renamed."""
    stamp = {"folder": os.stat(folder).st_mtime_ns,
             "classes": [os.stat(folder / name).st_mtime_ns for name in class_names]}
    if labels_file is not None:
        info = os.stat(labels_file)
        stamp["labels_file"] = [str(labels_file), info.st_mtime_ns, info.st_size]
    return stamp


def _read_cache(folder: Path, classes: list[str]) -> FileList | None:
    path = _cache_path(folder)
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("version") != CACHE_VERSION or cached["folder"] != str(folder.resolve()) \
                or cached["classes"] != classes:
            return None
        labels_file = Path(cached["stamp"]["labels_file"][0]) if "labels_file" in cached["stamp"] else None
        if _stamp(folder, cached["class_folders"], labels_file) != cached["stamp"]:
            return None
        return FileList(folder, cached["files"], np.asarray(cached["labels"], dtype=np.int64), classes)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # absent, stale or damaged: walk the folder again


def _write_cache(listing: FileList, class_folders: list[str], labels_file: Path | None) -> None:
    path = _cache_path(listing.folder)
    record = {"version": CACHE_VERSION, "folder": str(listing.folder.resolve()), "classes": listing.classes,
              "class_folders": class_folders, "stamp": _stamp(listing.folder, class_folders, labels_file),
              "files": listing.files, "labels": listing.labels.tolist()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(record, separators=(",", ":")), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only cache folder only costs the walk next time


# -------------------------------------------------------------------------------------------
# Listing

def _list_class_folders(folder: Path, class_folders: list[str], classes: list[str]) -> FileList:
    index = {name: i for i, name in enumerate(classes)}
    files, labels = [], []
    for name in class_folders:
        if name not in index:
            continue
        names = _image_names(folder / name)
        if not names:
            raise DataError(f"{folder / name}: empty class folder (no .JPEG/.jpg/.png files); "
                            "remove it or add its images")
        files += [f"{name}/{n}" for n in names]
        labels += [index[name]] * len(names)
    return FileList(folder, files, np.asarray(labels, dtype=np.int64), classes)


def _list_flat(folder: Path, labels_file: Path, classes: list[str]) -> FileList:
    names = _image_names(folder)
    by_id = {os.path.splitext(n)[0]: n for n in names}
    index = {name: i for i, name in enumerate(classes)}
    labelled: dict[str, int] = {}
    try:
        with open(labels_file, newline="", encoding="utf-8") as handle:
            rows = csv.reader(handle)
            header = next(rows, None)
            if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                raise DataError(f"{labels_file}: expected a CSV header 'ImageId,PredictionString'")
            for line, row in enumerate(rows, start=2):
                if not row:
                    continue
                tokens = row[1].split() if len(row) > 1 else []
                if not tokens:
                    raise DataError(f"{labels_file}: line {line}: no class in PredictionString")
                if row[0] not in by_id:
                    raise DataError(f"{labels_file}: line {line} names image '{row[0]}', which is not in "
                                    f"{folder}")
                if tokens[0] in index:
                    labelled[by_id[row[0]]] = index[tokens[0]]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{labels_file}: cannot read the labels file ({error})") from None
    if not labelled:
        raise DataError(f"{labels_file}: none of its rows belongs to the {len(classes)} training classes")
    files = sorted(labelled)
    return FileList(folder, files, np.asarray([labelled[f] for f in files], dtype=np.int64), classes)


def list_split(root: Path, split: str, classes: list[str] | None = None, use_cache: bool = True) -> FileList:
    """The files and labels of ``split`` ("train" or "val"); ``classes`` (sorted) default to the
    split's own class folders (pass the training classes when listing validation)."""
    folder = split_folder(root, split)
    class_folders = _class_folders(folder)
    labels_file = None
    if not class_folders:
        labels_file = _labels_file(root, folder)
        if labels_file is None:
            if split == "train" or not _image_names(folder):
                raise DataError(f"{folder}: no class folders (expected {folder}/<wnid>/*.JPEG)")
            raise DataError(f"{folder}: flat {split} folder but no labels file "
                            f"({' or '.join(LABEL_FILES)}) in {root} or {folder}")
        if classes is None:
            raise DataError(f"{folder}: the training split needs class folders (<wnid>/*.JPEG)")
    if classes is None:
        classes = class_folders
    elif class_folders and not set(class_folders) & set(classes):
        raise DataError(f"{folder}: none of its class folders is a training class "
                        f"(first: {class_folders[0]})")
    if use_cache:
        cached = _read_cache(folder, classes)
        if cached is not None:
            return cached
    if class_folders:
        listing = _list_class_folders(folder, class_folders, classes)
    else:
        listing = _list_flat(folder, labels_file, classes)
    if not listing.files:
        raise DataError(f"{folder}: no images of the {len(classes)} training classes")
    if use_cache:
        _write_cache(listing, class_folders, labels_file)
    return listing
