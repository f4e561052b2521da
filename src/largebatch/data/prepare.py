"""``largebatch prepare SRC OUT``: an ImageNet-layout folder to tar shards, once per tier.

Tiers (one folder each under OUT, each a complete prepared data set, :mod:`largebatch.data.shards`):

- ``originals``: the source files' bytes, copied unchanged;
- ``shortS``: re-encoded so that the shorter side is S pixels (e.g. ``short256``);
- ``maxS``: re-encoded so that the longer side is at most S pixels (e.g. ``max512``, FFCV's
  ImageNet files: ``write_imagenet.py --max-resolution 512`` with JPEG quality 90, libffcv/ffcv-imagenet).

Re-encoded images are resized with Pillow's Lanczos filter and written as baseline JPEG at
``quality`` (default 90, FFCV's) with Pillow's default 4:2:0 chroma subsampling; an image
already within the limit is copied unchanged when it is an RGB or greyscale JPEG, else
re-encoded at its own size. Every source image is decoded in full once, which finds the broken
and truncated ones: they are left out of every tier, listed in the manifest and named on stderr.

Work is cut into shards of ``images_per_shard`` consecutive images of the source listing
(sorted classes, sorted names: the order :func:`largebatch.data.imagenet.list_split` gives,
so image ``i`` of a tier is image ``i`` of the folder when nothing was skipped). Each shard is
one job for a pool of processes; a finished shard is a tar file moved into place and then a
record in ``parts/``. A killed run, started again with the same arguments, redoes only the
shards without a record; the index files and ``prepared.json`` are written last.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from largebatch.data import imagenet
from largebatch.data.files import READ_ERRORS
from largebatch.data.shards import (FORMAT, INDEX_DTYPE, MANIFEST, MAX_SIDE, SPLITS, ShardWriter, index_name,
                                    names_name, sample_key, shard_name, write_index_atomic, write_json_atomic)
from largebatch.errors import ConfigError

DEFAULT_QUALITY = 90  # FFCV's ImageNet files (write_imagenet.py, libffcv/ffcv-imagenet README)
DEFAULT_IMAGES_PER_SHARD = 2048  # ~230 MB of ImageNet originals (mean ~110 KB), ~100 MB at short side 256
EXTENSIONS = {"JPEG": "jpg", "PNG": "png"}


@dataclass(frozen=True)
class Tier:
    """``kind`` originals, short (shorter side = ``side``) or max (longer side <= ``side``)."""

    kind: str
    side: int = 0
    quality: int = DEFAULT_QUALITY

    @property
    def name(self) -> str:
        return "originals" if self.kind == "originals" else f"{self.kind}{self.side}-q{self.quality}"

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "side": self.side,
                "quality": self.quality if self.kind != "originals" else None}

    def target(self, width: int, height: int) -> tuple[int, int] | None:
        """The re-encoded size, or None when the image is already within the limit."""
        if self.kind == "short":
            scale = self.side / min(width, height)
        else:
            scale = self.side / max(width, height)
        if scale >= 1:
            return None
        return max(1, round(width * scale)), max(1, round(height * scale))


def parse_tiers(text: str, quality: int = DEFAULT_QUALITY) -> list[Tier]:
    """``originals,short256,max512`` -> tiers (each re-encoded one at JPEG ``quality``)."""
    if not 1 <= quality <= 100:
        raise ConfigError(f"--quality must be 1-100, got {quality}")
    tiers = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        match = re.fullmatch(r"(short|max)(\d{2,5})", item)
        if item == "originals":
            tiers.append(Tier("originals"))
        elif match and 16 <= int(match.group(2)) <= MAX_SIDE:
            tiers.append(Tier(match.group(1), int(match.group(2)), quality))
        else:
            raise ConfigError(f"--tiers: unknown tier '{item}'; use originals, shortN or maxN (N pixels, "
                              "e.g. originals,short256,max512)")
    if not tiers or len({t.name for t in tiers}) != len(tiers):
        raise ConfigError(f"--tiers: give one or more distinct tiers, got '{text}'")
    return tiers


# -------------------------------------------------------------------------------------------
# One image, one shard (in a worker process)

@dataclass(frozen=True)
class Encoded:
    data: bytes
    extension: str
    width: int
    height: int
    gpu: bool  # a baseline RGB or greyscale JPEG, which GPU JPEG decoders take


def encode(raw: bytes, tiers: list[Tier]) -> dict[str, Encoded]:
    """The bytes each tier stores for one source file; raises one of ``READ_ERRORS`` for a file
    that does not decode in full."""
    with Image.open(io.BytesIO(raw)) as image:
        source_format, mode = image.format, image.mode
        image.load()
        width, height = image.size
        if width > MAX_SIDE or height > MAX_SIDE:
            raise ValueError(f"{width}x{height} pixels, more than {MAX_SIDE} on a side")
        plain_jpeg = source_format == "JPEG" and mode in ("RGB", "L")
        out = {}
        for tier in tiers:
            target = tier.target(width, height) if tier.kind != "originals" else None
            if tier.kind == "originals" or (target is None and plain_jpeg):
                extension = EXTENSIONS.get(source_format or "", "img")
                out[tier.name] = Encoded(raw, extension, width, height, plain_jpeg)
                continue
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            if target is not None:
                rgb = rgb.resize(target, Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            rgb.save(buffer, "JPEG", quality=tier.quality)
            out[tier.name] = Encoded(buffer.getvalue(), "jpg", rgb.width, rgb.height, True)
    return out


@dataclass(frozen=True)
class Job:
    split: str
    number: int
    first: int  # position of the shard's first image in the source listing
    folder: str  # the split folder of the source
    names: tuple[str, ...]
    labels: tuple[int, ...]
    tiers: tuple[Tier, ...]
    out: str


def part_path(tier_folder: Path, split: str, number: int) -> Path:
    return tier_folder / "parts" / f"{split}-{number:06d}.json"


def write_shard(job: Job) -> dict:
    """Write shard ``job.number`` of ``job.split`` in every tier of the job; returns counts."""
    writers = {t.name: ShardWriter(Path(job.out) / t.name / shard_name(job.split, job.number)) for t in job.tiers}
    entries: dict[str, list] = {t.name: [] for t in job.tiers}
    skipped: list[tuple[str, str]] = []
    try:
        for slot, (name, label) in enumerate(zip(job.names, job.labels)):
            path = os.path.join(job.folder, name)
            try:
                with open(path, "rb") as handle:
                    raw = handle.read()
                encoded = encode(raw, list(job.tiers))
            except READ_ERRORS as error:
                reason = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", f"{type(error).__name__}: {error}")
                skipped.append((name, reason.splitlines()[0][:160]))
                continue
            key = sample_key(job.split, job.first + slot)
            for tier in job.tiers:
                item = encoded[tier.name]
                offset = writers[tier.name].add(f"{key}.{item.extension}", item.data)
                writers[tier.name].add(f"{key}.cls", str(label).encode())
                entries[tier.name].append([slot, offset, len(item.data), label, item.width, item.height,
                                           zlib.crc32(item.data), int(item.gpu)])
        written = 0
        for tier in job.tiers:
            size, sha256 = writers[tier.name].close()
            written += size
            record = {"tier": tier.name, "split": job.split, "number": job.number, "names": list(job.names),
                      "bytes": size, "sha256": sha256, "entries": entries[tier.name],
                      "skipped": [list(s) for s in skipped]}
            write_json_atomic(part_path(Path(job.out) / tier.name, job.split, job.number), record)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    return {"images": len(job.names), "bytes": written, "skipped": skipped, "folder": job.folder}


# -------------------------------------------------------------------------------------------
# Resuming and finishing

def read_part(tier_folder: Path, split: str, number: int, names: tuple[str, ...]) -> dict | None:
    """The record of a finished shard, or None when it is absent, stale (other source names)
    or its tar file is missing or of another size."""
    try:
        record = json.loads(part_path(tier_folder, split, number).read_text(encoding="utf-8"))
        shard = tier_folder / shard_name(split, number)
        if record["tier"] != tier_folder.name or record["names"] != list(names) \
                or not shard.is_file() or shard.stat().st_size != record["bytes"]:
            return None
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finish_tier(tier_folder: Path, tier: Tier, listings: dict, images_per_shard: int, source: Path) -> dict:
    """Index, names and manifest of a tier whose shards are all written; returns the manifest."""
    splits = {}
    for split, listing in listings.items():
        rows, names, shards, skipped = [], [], [], []
        for number in range(math.ceil(len(listing.files) / images_per_shard)):
            first = number * images_per_shard
            shard_names = tuple(listing.files[first:first + images_per_shard])
            record = read_part(tier_folder, split, number, shard_names)
            if record is None:
                raise RuntimeError(f"{tier_folder}: shard {number} of {split} was not written")
            for slot, offset, size, label, width, height, crc, gpu in record["entries"]:
                rows.append((number, offset, size, label, width, height, crc, gpu))
                names.append(shard_names[slot])
            shards.append({"name": shard_name(split, number), "bytes": record["bytes"], "sha256": record["sha256"],
                           "images": len(record["entries"])})
            skipped += record["skipped"]
        index = np.array(rows, dtype=INDEX_DTYPE) if rows else np.zeros(0, dtype=INDEX_DTYPE)
        write_index_atomic(tier_folder / index_name(split), index)
        write_json_atomic(tier_folder / names_name(split), names)
        splits[split] = {"images": len(index), "shards": shards, "skipped": skipped}
    identity = hashlib.sha256("".join(s["sha256"] for split in SPLITS for s in splits[split]["shards"]).encode())
    manifest = {"format": FORMAT, "version": 1, "id": identity.hexdigest()[:32], "tier": tier.describe(),
                "classes": listings["train"].classes, "images_per_shard": images_per_shard,
                "source": str(source), "splits": splits}
    write_json_atomic(tier_folder / MANIFEST, manifest)
    return manifest


class PrepareProgress:
    """A live line on a terminal, else one line every ``interval`` seconds, on ``stream``."""

    def __init__(self, total_images: int, total_shards: int, done_images: int, done_shards: int,
                 stream=None, interval: float = 10.0):
        self.total_images, self.total_shards = total_images, total_shards
        self.images, self.shards, self.bytes, self.skipped = done_images, done_shards, 0, 0
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.25 if self.live else interval
        self.started = self.last = time.monotonic()
        self.resumed_images = done_images

    def update(self, images: int, written: int, skipped: int) -> None:
        self.images += images
        self.shards += 1
        self.bytes += written
        self.skipped += skipped
        now = time.monotonic()
        if now - self.last >= self.interval or self.shards == self.total_shards:
            self.last = now
            self.draw(now)

    def draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = (self.images - self.resumed_images) / elapsed
        left = (self.total_images - self.images) / rate if rate > 0 else float("nan")
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if math.isfinite(left) else "?"
        line = (f"prepare: {self.images:,}/{self.total_images:,} images, {self.shards}/{self.total_shards} shards, "
                f"{rate:,.0f} images/s, {self.bytes / elapsed / 1e6:,.1f} MB/s written, {self.skipped} skipped, "
                f"ETA {eta}")
        if self.live:
            self.stream.write("\r\033[K" + line + ("\n" if self.shards == self.total_shards else ""))
            self.stream.flush()
        else:
            print(line, file=self.stream, flush=True)


def prepare(source: str | os.PathLike, out: str | os.PathLike, tiers: list[Tier],
            images_per_shard: int = DEFAULT_IMAGES_PER_SHARD, processes: int = 0, stream=None) -> dict[str, dict]:
    """Convert the ImageNet-layout folder ``source`` (train and val, as ``--data-dir`` reads it)
    into one tier folder per tier under ``out``; resumable. Returns each tier's manifest.
    ``processes`` 0: one per available core."""
    if images_per_shard < 1:
        raise ConfigError(f"--images-per-shard must be at least 1, got {images_per_shard}")
    root = imagenet.locate(str(source))
    train = imagenet.list_split(root, "train", use_cache=False)
    listings = {"train": train, "val": imagenet.list_split(root, "val", train.classes, use_cache=False)}
    out = Path(out)
    for tier in tiers:
        (out / tier.name / "parts").mkdir(parents=True, exist_ok=True)
        for stale in (out / tier.name).glob(".*.partial"):  # from a killed run
            stale.unlink(missing_ok=True)

    jobs, done_images, done_shards, total_shards = [], 0, 0, 0
    for split, listing in listings.items():
        for number in range(math.ceil(len(listing.files) / images_per_shard)):
            first = number * images_per_shard
            names = tuple(listing.files[first:first + images_per_shard])
            missing = tuple(t for t in tiers if read_part(out / t.name, split, number, names) is None)
            total_shards += 1
            if missing:
                labels = tuple(int(x) for x in listing.labels[first:first + images_per_shard])
                jobs.append(Job(split, number, first, str(listing.folder), names, labels, missing, str(out)))
            else:
                done_images += len(names)
                done_shards += 1
    total_images = sum(len(listing.files) for listing in listings.values())
    stream = stream or sys.stderr
    if done_shards:
        print(f"prepare: resuming, {done_shards}/{total_shards} shards already written", file=stream, flush=True)
    progress = PrepareProgress(total_images, total_shards, done_images, done_shards, stream)
    processes = processes or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    def report(result: dict) -> None:
        for name, reason in result["skipped"]:
            print(f"largebatch: warning: skipped unreadable image {os.path.join(result['folder'], name)} ({reason})",
                  file=stream, flush=True)
        progress.update(result["images"], result["bytes"], len(result["skipped"]))

    if processes == 1 or len(jobs) <= 1:
        for job in jobs:
            report(write_shard(job))
    else:
        with multiprocessing.get_context("fork").Pool(min(processes, len(jobs))) as pool:
            for result in pool.imap_unordered(write_shard, jobs):
                report(result)
    return {tier.name: finish_tier(out / tier.name, tier, listings, images_per_shard, root.resolve()) for tier in tiers}


def run_command(args) -> int:
    """``largebatch prepare`` (arguments: :func:`largebatch.cli.add_prepare_args`)."""
    from largebatch.data.shards import verify
    if args.verify:
        count = verify(Path(args.verify))
        print(f"{args.verify}: {count} shards, sizes and SHA-256 as in {MANIFEST}")
        return 0
    if not args.source or not args.out:
        raise ConfigError("prepare needs SRC and OUT (or --verify TIER_DIR); see largebatch prepare --help")
    tiers = parse_tiers(args.tiers, args.quality)
    manifests = prepare(args.source, args.out, tiers, args.images_per_shard, args.processes)
    print("| tier | split | images | shards | GB | KB per image | skipped |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, manifest in manifests.items():
        for split in SPLITS:
            entry = manifest["splits"][split]
            total = sum(s["bytes"] for s in entry["shards"])
            print(f"| {name} | {split} | {entry['images']:,} | {len(entry['shards'])} | {total / 1e9:.3f} | "
                  f"{total / max(1, entry['images']) / 1024:.1f} | {len(entry['skipped'])} |")
    for name in manifests:
        print(f"train from it with: --dataset imagenet --data-dir {Path(args.out) / name}")
    return 0
