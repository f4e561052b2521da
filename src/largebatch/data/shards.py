"""Prepared data sets: images in tar shards (WebDataset layout), read by index.

A *tier* folder, written by ``largebatch prepare`` (:mod:`largebatch.data.prepare`), holds::

    prepared.json            format, tier, class map, per split: images, shards (name, bytes,
                             SHA-256, images) and the source files that were skipped
    train-000000.tar ...     shards: members <key>.jpg (or .png) and <key>.cls, in index order
    train.index.npy          per image: shard, byte offset, size, label, width, height, CRC-32,
                             whether a GPU JPEG decoder takes it (a numpy structured array)
    train.names.json         per image: its path in the source folder (messages only)
    val-000000.tar ... val.index.npy  val.names.json

The tar files are plain POSIX (ustar) archives in which a sample's members are adjacent and
named ``<key>.<extension>``, WebDataset's layout, so ``tar``, webdataset, wids and DALI's
webdataset reader can read them too. :class:`ShardDataset` reads image ``i`` with one
``pread`` of the byte range the index gives and checks its CRC-32, so the step-indexed sampler
stays the only source of order, and a damaged shard is a one-line error naming it.

Every file read here is untrusted: the manifest and index are validated in full when opened,
and shard paths are built from the split name and shard number, never from names in a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from largebatch.data.files import ImageFileDataset
from largebatch.data.transforms import ImageTransform
from largebatch.errors import DataError

FORMAT = "largebatch-shards"
VERSION = 1
MANIFEST = "prepared.json"
SPLITS = ("train", "val")
INDEX_DTYPE = np.dtype([("shard", "<u4"), ("offset", "<u8"), ("size", "<u4"), ("label", "<i4"),
                        ("width", "<u4"), ("height", "<u4"), ("crc32", "<u4"), ("gpu", "u1")])
MAX_SIDE = 1 << 16  # larger stored images are refused, as PIL's decompression-bomb limit would
TAR_HEADER = 512  # bytes of a ustar member header (names under 100 characters)
HOW_TO_FIX = "copy the shard again from the prepared original, or run `largebatch prepare` again"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def index_name(split: str) -> str:
    return f"{split}.index.npy"


def names_name(split: str) -> str:
    return f"{split}.names.json"


def sample_key(split: str, index: int) -> str:
    """The WebDataset key of image ``index`` of ``split`` (no dots: the key ends at the first one)."""
    return f"{split}_{index:08d}"


# -------------------------------------------------------------------------------------------
# Writing

class _HashingFile:
    """A write-only file that hashes what passes through and counts bytes (tarfile needs tell)."""

    def __init__(self, handle):
        self.handle, self.sha256, self.position = handle, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.handle.write(data)
        self.sha256.update(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position


class ShardWriter:
    """Writes one shard to ``path`` (under a temporary name until :meth:`close`): byte-identical
    for the same members (mtime 0, owner 0, mode 0644, ustar)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self._handle = open(self.temporary, "wb")
        self._file = _HashingFile(self._handle)
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes) -> int:
        """Add member ``name`` holding ``data``; returns the byte offset of ``data`` in the shard."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = \
            len(data), 0, 0o644, 0, 0, "", ""
        if len(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")) != TAR_HEADER:
            raise ValueError(f"tar member name too long: {name}")
        offset = self._file.tell() + TAR_HEADER
        self._tar.addfile(info, io.BytesIO(data))
        return offset

    def close(self) -> tuple[int, str]:
        """Finish the archive and move it into place; returns (bytes, SHA-256 hex)."""
        self._tar.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.temporary, self.path)
        return self._file.position, self._file.sha256.hexdigest()

    def abort(self) -> None:
        try:
            self._handle.close()
        finally:
            self.temporary.unlink(missing_ok=True)


def write_json_atomic(path: Path, value) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def write_index_atomic(path: Path, index: np.ndarray) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, index.astype(INDEX_DTYPE), allow_pickle=False)
    os.replace(temporary, path)


# -------------------------------------------------------------------------------------------
# Finding and validating a prepared folder

def find_prepared(root: Path) -> Path | None:
    """The tier folder ``root`` names: ``root`` itself when it holds ``prepared.json``, or its one
    tier subfolder. None for a plain image folder. A folder of shards without the manifest, or
    several tiers, is a one-line :class:`DataError`."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return root
    tiers = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file()) \
        if root.is_dir() else []
    if len(tiers) == 1:
        return root / tiers[0]
    if len(tiers) > 1:
        raise DataError(f"{root} holds {len(tiers)} prepared tiers ({', '.join(tiers)}): give one of them "
                        f"as --data-dir, e.g. {root / tiers[0]}")
    if root.is_dir() and (any(root.glob("*.tar")) or (root / "parts").is_dir()):
        raise DataError(f"{root}: tar shards but no index ({MANIFEST}): a `largebatch prepare` that did not "
                        "finish, or a partial copy; run the same `largebatch prepare` again (it resumes)")
    return None


def _bad(folder: Path, what: str) -> DataError:
    return DataError(f"{folder / MANIFEST}: {what}; run `largebatch prepare` again to rewrite it")


def load_manifest(folder: Path) -> dict:
    """``prepared.json``, checked field by field."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder}: missing index {MANIFEST}: not a prepared data set; run "
                        "`largebatch prepare SRC OUT`") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: cannot read the manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _bad(folder, f"not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise _bad(folder, f"version {manifest.get('version')!r}, this largebatch reads version {VERSION}")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes) \
            or len(set(classes)) != len(classes):
        raise _bad(folder, "'classes' must be a non-empty list of distinct names")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise _bad(folder, "no 'splits'")
    for split in SPLITS:
        entry = splits.get(split)
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), int) \
                or not isinstance(entry.get("shards"), list):
            raise _bad(folder, f"split '{split}' missing or malformed")
        for number, shard in enumerate(entry["shards"]):
            if not isinstance(shard, dict) or shard.get("name") != shard_name(split, number) \
                    or not isinstance(shard.get("bytes"), int) or shard["bytes"] < 0 \
                    or not isinstance(shard.get("images"), int) \
                    or not re.fullmatch(r"[0-9a-f]{64}", str(shard.get("sha256", ""))):
                raise _bad(folder, f"shard entry {number} of split '{split}' malformed")
    return manifest


def load_index(folder: Path, split: str, manifest: dict) -> np.ndarray:
    """The index of ``split``, checked against the manifest: shard numbers, byte ranges inside
    their shards, labels inside the class map, sane image sizes."""
    path = folder / index_name(split)
    try:
        index = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: missing index; the prepared folder is incomplete: run the same "
                        "`largebatch prepare` again (it resumes)") from None
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: cannot read the index ({str(error).splitlines()[0]}); run `largebatch prepare` "
                        "again") from None
    shards = manifest["splits"][split]["shards"]
    if index.dtype != INDEX_DTYPE or index.ndim != 1:
        raise DataError(f"{path}: not a {FORMAT} index (dtype {index.dtype})")
    if len(index) != manifest["splits"][split]["images"]:
        raise DataError(f"{path}: {len(index)} images, {MANIFEST} says {manifest['splits'][split]['images']}")
    if len(index):
        shard_bytes = np.array([s["bytes"] for s in shards] or [0], dtype=np.uint64)
        problems = [
            (index["shard"] >= len(shards), "a shard number beyond the shards"),
            (index["size"] == 0, "an empty image"),
            ((index["label"] < 0) | (index["label"] >= len(manifest["classes"])), "a label outside the class map"),
            ((index["width"] == 0) | (index["height"] == 0) | (index["width"] > MAX_SIDE)
             | (index["height"] > MAX_SIDE), "an image size out of range"),
        ]
        for bad, what in problems:
            if bad.any():
                raise DataError(f"{path}: entry {int(np.flatnonzero(bad)[0])} has {what}")
        ends = index["offset"] + index["size"].astype(np.uint64)
        beyond = ends > shard_bytes[np.minimum(index["shard"], len(shards) - 1)]
        if beyond.any():
            raise DataError(f"{path}: entry {int(np.flatnonzero(beyond)[0])} points past the end of its shard")
    return index


def load_names(folder: Path, split: str, count: int) -> list[str]:
    path = folder / names_name(split)
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: cannot read the image names ({error}); run `largebatch prepare` again") from None
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected {count} image names")
    return names


# -------------------------------------------------------------------------------------------
# Checksums and the node-local cache

def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(folder: Path) -> int:
    """Check every shard of a tier folder against its size and SHA-256 in the manifest; the first
    damaged or missing one is a :class:`DataError` naming it. Returns the number of shards."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    count = 0
    for split in SPLITS:
        load_index(folder, split, manifest)
        for number, shard in enumerate(manifest["splits"][split]["shards"]):
            path = folder / shard_name(split, number)
            if not path.is_file():
                raise DataError(f"{path}: missing shard; {HOW_TO_FIX}")
            if path.stat().st_size != shard["bytes"] or file_sha256(path) != shard["sha256"]:
                raise DataError(f"{path}: damaged shard (size or SHA-256 differs from {MANIFEST}); {HOW_TO_FIX}")
            count += 1
    return count


def copy_verified(source: Path, target: Path, sha256: str) -> None:
    """Copy a shard to ``target`` (a temporary name, then a rename), checking its SHA-256 on the way."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as reader, open(temporary, "wb") as writer:
            for block in iter(lambda: reader.read(1 << 22), b""):
                digest.update(block)
                writer.write(block)
        if digest.hexdigest() != sha256:
            raise DataError(f"{source}: damaged shard (its SHA-256 differs from {MANIFEST}); {HOW_TO_FIX}")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


# -------------------------------------------------------------------------------------------
# Reading

class ShardDataset(ImageFileDataset):
    """One split of a prepared tier folder, read by index; decoding and every augmentation
    decision are :class:`ImageFileDataset`'s, so a batch equals the one decoded from the
    original files for the same images.

    ``cache_dir``: a node-local folder; each shard is copied there (checked against its
    SHA-256) by the first process of the node that needs it, and read from there afterwards."""

    def __init__(self, folder: str | os.PathLike, split: str, transform: ImageTransform, seed: int = 0,
                 cache_dir: str = ""):
        folder = Path(folder)
        manifest = load_manifest(folder)
        self.folder = os.fspath(folder)
        self.split = split
        self.classes: list[str] = manifest["classes"]
        self.shards: list[dict] = manifest["splits"][split]["shards"]
        self.dataset_id = str(manifest.get("id", ""))
        self.index = load_index(folder, split, manifest)
        names = load_names(folder, split, len(self.index))
        self.files = np.array([os.fsencode(n) for n in names], dtype=np.bytes_)
        self.labels = self.index["label"].astype(np.int64)
        self.transform, self.seed = transform, seed
        self.cache_dir = cache_dir
        if cache_dir and not re.fullmatch(r"[0-9a-f]{16,64}", self.dataset_id):
            raise DataError(f"{folder / MANIFEST}: no data-set id, so the shards cannot be cached; run "
                            "`largebatch prepare` again")
        self._open: dict[int, int] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for descriptor in getattr(self, "_open", {}).values():
                try:
                    os.close(descriptor)
                except OSError:
                    pass

    def subset(self, indices) -> ShardDataset:
        keep = np.asarray(indices, dtype=np.int64)
        subset = ShardDataset.__new__(ShardDataset)
        subset.__dict__.update(self.__getstate__())
        subset.index, subset.files, subset.labels = self.index[keep], self.files[keep], self.labels[keep]
        subset._pid = os.getpid()
        return subset

    def shard_path(self, number: int) -> Path:
        return Path(self.folder) / shard_name(self.split, number)

    def path(self, index: int) -> str:
        return f"{self.shard_path(int(self.index[index]['shard']))}:{os.fsdecode(self.files[index])}"

    def dimensions(self, index: int) -> tuple[int, int]:
        entry = self.index[index]
        return int(entry["width"]), int(entry["height"])

    def encoded_header(self, index: int, data: bytes) -> tuple[int, int, bool]:
        entry = self.index[index]
        return int(entry["width"]), int(entry["height"]), bool(entry["gpu"])

    def _cached(self, number: int) -> Path:
        """The node-local copy of shard ``number``, made now if no other process is making it;
        the original while another one is."""
        source, shard = self.shard_path(number), self.shards[number]
        folder = Path(self.cache_dir) / self.dataset_id
        target = folder / source.name
        if target.is_file() and target.stat().st_size == shard["bytes"]:
            return target
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f".{source.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return source  # another process of this node is copying it
            if not (target.is_file() and target.stat().st_size == shard["bytes"]):
                copy_verified(source, target, shard["sha256"])
        return target

    def _descriptor(self, number: int) -> int:
        if self._pid != os.getpid():  # a forked worker: its own descriptors
            self._open, self._pid = {}, os.getpid()
        descriptor = self._open.get(number)
        if descriptor is None:
            path = self._cached(number) if self.cache_dir else self.shard_path(number)
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise DataError(f"{path}: missing shard; {HOW_TO_FIX}") from None
            size = os.fstat(descriptor).st_size
            if size != self.shards[number]["bytes"]:
                os.close(descriptor)
                raise DataError(f"{path}: damaged shard: {size} bytes, {MANIFEST} says "
                                f"{self.shards[number]['bytes']}; {HOW_TO_FIX}")
            self._open[number] = descriptor
        return descriptor

    def read_bytes(self, index: int) -> bytes:
        entry = self.index[index]
        number, offset, size = int(entry["shard"]), int(entry["offset"]), int(entry["size"])
        data = os.pread(self._descriptor(number), size, offset)
        if len(data) != size or zlib.crc32(data) != int(entry["crc32"]):
            raise DataError(f"{self.shard_path(number)}: damaged shard: image {os.fsdecode(self.files[index])} "
                            f"(bytes {offset}-{offset + size}) fails its CRC-32; {HOW_TO_FIX}")
        return data

    def open_image(self, index: int) -> Image.Image:
        return Image.open(io.BytesIO(self.read_bytes(index)))
