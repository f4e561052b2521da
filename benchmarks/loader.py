"""Training-pipeline images/s per core of a loader process: a torchvision-equivalent baseline against ours.

Writes a folder of ImageNet-sized JPEGs (quality 90; smooth colour fields plus texture and noise,
tuned so that a 500x375 image compresses to about 107 KB, near the mean of ImageNet's training
JPEGs, about 110 KB), then, in this one process pinned to one core, times
(in CPU seconds, which other load on the machine disturbs less than wall time) the work a
loader worker does per training image: decode, random-resized crop to SIZE, horizontal
flip, and a uint8 batch tensor. Pipelines, measured in the same run, interleaved:

- ``baseline``: what torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip`` +
  ``PILToTensor`` + ``default_collate`` do, written here: ``Image.open().convert("RGB")`` (full
  decode), crop, bilinear resize, flip, HWC->CHW tensor, ``torch.stack``;
- ``ours, full decode``: :class:`largebatch.data.ImageFileDataset` with ``fast_decode`` off
  (one resize of the crop box, written straight into a channels-last batch buffer);
- ``ours, fast decode``: the same with the DCT-domain reduced decode (``fast_decode`` on).

All three draw their crop boxes with the same algorithm from the stored image size.

    PYTHONPATH=src python benchmarks/loader.py --json benchmarks/loader.json

``--suite tiers`` measures storage formats instead, on a generated corpus of ImageNet-sized JPEGs
(``--corpus`` images of 500x375, ~107 KB) prepared by ``largebatch prepare`` into the tiers
originals, max512-q90, short256-q90 and short256-q75: the same training pipeline (decode, random-resized
crop to SIZE, flip, uint8 batch), each image once per round, from

- ``folder, originals``: the JPEG files (the baseline of this suite);
- ``shards, originals``: the same bytes read by index from tar shards (pread + CRC-32);
- ``shards, originals, bytes in memory``: the same without the reads, i.e. decode alone; its
  ratio to the line above is what the shard reader costs;
- ``shards, max512-q90``, ``shards, short256-q90`` and ``shards, short256-q75``: the re-encoded
  tiers (quality 90 is FFCV's setting; 75 is libjpeg's and Pillow's default: fewer non-zero
  coefficients, so less entropy decoding, the part of a decode that no reduction skips).

It also profiles the pipeline step by step (open, decode, resize, flip, copy out) for the
originals and the short256 tiers: where a tier's gain comes from and where it stops.

    PYTHONPATH=src python benchmarks/loader.py --suite tiers --json benchmarks/results/loader-tiers.json
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from largebatch.data import ImageFileDataset
from largebatch.data.transforms import image_rng, random_resized_crop_box, train_transform


BASELINE = "baseline (torchvision-equivalent)"
LOW_QUALITY = 75  # the tiers suite's second re-encoding quality (libjpeg's default)


def natural_image(width: int, height: int, seed: int) -> Image.Image:
    """Colour fields at a few scales, texture and sensor-like noise."""
    generator = np.random.default_rng(seed)
    x, y = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    pixels = np.zeros((height, width, 3), np.float32)
    for channel in range(3):
        for period in (width / 2, width / 8, width / 30):
            phase = generator.uniform(0, 6.3, 2)
            pixels[..., channel] += generator.uniform(10, 40) * np.outer(
                np.cos(y / period * generator.uniform(0.5, 1.5) + phase[1]),
                np.sin(x / period * generator.uniform(0.5, 1.5) + phase[0]))
        pixels[..., channel] += generator.uniform(60, 190)
    coarse = generator.normal(0, 24, (height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
    pixels += np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:height, :width]
    pixels += generator.normal(0, 16, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_images(folder: Path, count: int, width: int, height: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"img_{width}x{height}_{i:04d}.JPEG"
        if not (folder / name).exists():
            natural_image(width, height, seed=i).save(folder / name, "JPEG", quality=90)
        names.append(name)
    return names


def _write_corpus_image(job: tuple[str, int, int, int]) -> None:
    path, width, height, seed = job
    if not os.path.exists(path):
        natural_image(width, height, seed).save(path, "JPEG", quality=90)


def write_corpus(root: Path, train: int, val: int, classes: int, width: int = 500, height: int = 375,
                 processes: int = 0) -> Path:
    """An ImageNet-layout folder (root/train/<class>/*.JPEG, root/val/<class>/*.JPEG) of textured
    ``width x height`` JPEGs at quality 90; kept if already there."""
    jobs = []
    for split, count, base in (("train", train, 0), ("val", val, 10_000_000)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(c, count, classes):
                jobs.append((str(folder / f"n{c:08d}_{i}.JPEG"), width, height, base + i))
    with multiprocessing.get_context("fork").Pool(processes or len(os.sched_getaffinity(0))) as pool:
        pool.map(_write_corpus_image, jobs, chunksize=16)
    return root


def baseline_batch(paths: list[str], positions: list[int], size: int, seed: int) -> torch.Tensor:
    """torchvision's RandomResizedCrop + RandomHorizontalFlip + PILToTensor + default_collate."""
    tensors = []
    for path, position in zip(paths, positions):
        rng = image_rng(seed, position)
        with open(path, "rb") as handle:
            image = Image.open(handle).convert("RGB")
        box = random_resized_crop_box(image.width, image.height, rng)
        image = image.crop(box).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensors.append(torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1))
    return torch.stack(tensors)


def measure(config: tuple[int, int, int], folder: Path, count: int, batch: int, repeats: int) -> dict:
    width, height, size = config
    count = max(40, round(count * 500 * 375 / (width * height)))  # larger images: fewer, same pixels
    names = write_images(folder, count, width, height)
    paths = [str(folder / n) for n in names]
    datasets = {fast: ImageFileDataset(folder, names, [0] * len(names),
                                       train_transform("extended", size, color_jitter=0.0, lighting=0.0,
                                                       fast=fast), seed=0)
                for fast in (False, True)}
    pipelines = {
        BASELINE: lambda idx, pos: baseline_batch([paths[i] for i in idx], pos, size, 0),
        "ours, full decode": lambda idx, pos: datasets[False].load_batch(idx, pos).images,
        "ours, fast decode": lambda idx, pos: datasets[True].load_batch(idx, pos).images,
    }
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    wall: dict[str, list[float]] = {name: [] for name in pipelines}
    order = list(range(count))
    for repeat in range(repeats + 1):  # the first round warms the page cache and is not counted
        for name, run in pipelines.items():
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            for first in range(0, count, batch):
                indices = order[first:first + batch]
                positions = [repeat * count + i for i in indices]
                run(indices, positions)
            if repeat:
                rates[name].append(count / (time.process_time() - cpu_start))
                wall[name].append(count / (time.perf_counter() - wall_start))
    base = statistics.median(rates[BASELINE])
    kb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
    return {"width": width, "height": height, "size": size, "mean_jpeg_kb": round(kb, 1), "images": count,
            "pipelines": {name: {"images_per_cpu_s": round(statistics.median(r), 1),
                                 "runs": [round(x, 1) for x in r],
                                 "wall_images_per_s": round(statistics.median(wall[name]), 1),
                                 "ratio": round(statistics.median(r) / base, 2)} for name, r in rates.items()}}


class BytesInMemory:
    """A shard data set whose images' bytes were read beforehand: decoding alone."""

    def __new__(cls, dataset):
        from largebatch.data.shards import ShardDataset

        class InMemory(ShardDataset):
            def read_bytes(self, index: int) -> bytes:
                return self.held[index]

        held = InMemory.__new__(InMemory)
        held.__dict__.update(dataset.__getstate__())
        held._pid = os.getpid()
        held.held = [dataset.read_bytes(i) for i in range(len(dataset))]
        return held


STAGES = ("open", "decode", "resize", "flip", "copy out")


def stage_times(dataset, transform, size: int) -> dict[str, float]:
    """Microseconds per image of each step of the pipeline, over the data set's bytes held in
    memory: ``Image.open`` (header), full decode, the one box resize to ``size``, flip, and the
    copy to a numpy array. A profile: the steps are timed one by one with the plain (full)
    decode, so they add up to a little more than the pipeline's own time."""
    held = [dataset.read_bytes(i) for i in range(len(dataset))]
    totals = dict.fromkeys(STAGES, 0.0)
    for position, data in enumerate(held):
        started = time.process_time()
        image = Image.open(io.BytesIO(data))
        totals["open"] += time.process_time() - started
        params = transform.sample(image.width, image.height, image_rng(0, position), size)  # not timed
        marks = [time.process_time()]
        image.load()
        marks.append(time.process_time())
        out = image.resize((size, size), Image.Resampling.BILINEAR, box=params.box)
        marks.append(time.process_time())
        if params.flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        marks.append(time.process_time())
        np.asarray(out)
        marks.append(time.process_time())
        for stage, earlier, later in zip(STAGES[1:], marks, marks[1:]):
            totals[stage] += later - earlier
    return {stage: round(1e6 * seconds / len(held), 1) for stage, seconds in totals.items()}


def measure_tiers(folder: Path, count: int, size: int, batch: int, repeats: int) -> dict:
    from largebatch.data import imagenet
    from largebatch.data.prepare import parse_tiers, prepare
    from largebatch.data.shards import ShardDataset

    started = time.perf_counter()
    source = write_corpus(folder / "corpus", train=count, val=max(4, count // 50), classes=4)
    written = time.perf_counter()
    tiers = parse_tiers("originals,max512,short256", quality=90)
    manifests = prepare(source, folder / "prepared", tiers, images_per_shard=512, stream=io.StringIO())
    manifests.update(prepare(source, folder / "prepared", parse_tiers("short256", quality=LOW_QUALITY),
                             images_per_shard=512, stream=io.StringIO()))
    prepared = time.perf_counter()
    transform = train_transform("extended", size, color_jitter=0.0, lighting=0.0, fast=True)
    listing = imagenet.list_split(source, "train", use_cache=False)
    originals = ShardDataset(folder / "prepared" / "originals", "train", transform)
    datasets = {
        "folder, originals": ImageFileDataset(listing.folder, listing.files, listing.labels, transform),
        "shards, originals": originals,
        "shards, originals, bytes in memory (decode alone)": BytesInMemory(originals),
        "shards, max512-q90": ShardDataset(folder / "prepared" / "max512-q90", "train", transform),
        "shards, short256-q90": ShardDataset(folder / "prepared" / "short256-q90", "train", transform),
        f"shards, short256-q{LOW_QUALITY}": ShardDataset(folder / "prepared" / f"short256-q{LOW_QUALITY}", "train",
                                                       transform),
    }
    # Interleaved batch by batch (the pipelines take turns on each batch of the same images, in a
    # rotating order), so that a slow spell of the shared machine lands on all of them alike.
    rates: dict[str, list[float]] = {name: [] for name in datasets}
    names = list(datasets)
    for repeat in range(repeats + 1):  # the first round warms the page cache and is not counted
        seconds = dict.fromkeys(names, 0.0)
        for number, first in enumerate(range(0, count, batch)):
            indices = list(range(first, min(count, first + batch)))
            positions = [repeat * count + i for i in indices]
            for name in names[number % len(names):] + names[:number % len(names)]:
                cpu_start = time.process_time()
                datasets[name].load_batch(indices, positions)
                seconds[name] += time.process_time() - cpu_start
        if repeat:
            for name in names:
                rates[name].append(count / seconds[name])
    stages = {name: stage_times(datasets[name], transform, size)
              for name in ("shards, originals", "shards, short256-q90", f"shards, short256-q{LOW_QUALITY}")}
    base = statistics.median(rates["folder, originals"])
    results = {}
    for name, runs in rates.items():
        tier = name.split(", ")[1]
        manifest = manifests.get(tier)
        kb = (sum(s["bytes"] for s in manifest["splits"]["train"]["shards"]) / count / 1024) if manifest else None
        results[name] = {"images_per_cpu_s": round(statistics.median(runs), 1), "runs": [round(x, 1) for x in runs],
                         "ratio": round(statistics.median(runs) / base, 3),
                         "stored_kb_per_image": round(kb, 1) if kb else None}
    shard = statistics.median(rates["shards, originals"])
    alone = statistics.median(rates["shards, originals, bytes in memory (decode alone)"])
    per_round = [a / s for a, s in zip(rates["shards, originals, bytes in memory (decode alone)"],
                                       rates["shards, originals"])]
    return {"images": count, "size": size, "pipelines": results, "stage_us": stages,
            "shard_reader_overhead": round(alone / shard - 1, 4),
            "shard_reader_overhead_runs": [round(x - 1, 4) for x in per_round],
            "corpus_seconds": round(written - started, 1), "prepare_seconds": round(prepared - written, 1)}


def main_tiers(args: argparse.Namespace, folder: Path, machine: str) -> None:
    result = measure_tiers(folder, args.corpus, args.size, args.batch, args.repeats)
    print(f"\nloader images per CPU-second, one process pinned to one core, {result['images']} JPEGs of 500x375 "
          f"(quality 90), random-resized crop to {result['size']} + flip -> uint8 batch, median of {args.repeats}; "
          "files in the page cache\n")
    print("| source | stored KB per image | images/s per core | vs folder originals |")
    print("|---|---:|---:|---:|")
    for name, p in result["pipelines"].items():
        kb = f"{p['stored_kb_per_image']:.1f}" if p["stored_kb_per_image"] else ""
        print(f"| {name} | {kb} | {p['images_per_cpu_s']:.0f} | {p['ratio']:.2f}x |")
    print("\nper image, microseconds of CPU, step by step (full decode):\n")
    print("| source | " + " | ".join(STAGES) + " |")
    print("|---|" + "---:|" * len(STAGES))
    for name, stages in result["stage_us"].items():
        print(f"| {name} | " + " | ".join(f"{stages[stage]:.0f}" for stage in STAGES) + " |")
    print(f"\nshard reader (pread + CRC-32) over decode alone: {100 * result['shard_reader_overhead']:+.1f}% "
          f"(per round: {', '.join(f'{100 * x:+.1f}%' for x in result['shard_reader_overhead_runs'])})")
    print(f"\n{machine}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "command": "benchmarks/loader.py --suite tiers "
                                                f"--corpus {args.corpus} --size {args.size} --repeats {args.repeats}",
                                               "result": result}, indent=2) + "\n")
        print(f"wrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300,
                        help="JPEGs per configuration at 500x375 (larger ones: as many pixels, at least 40)")
    parser.add_argument("--configs", default="500x375@224,500x375@160,500x375@128,1000x750@224,2000x1500@224",
                        help="comma-separated WIDTHxHEIGHT@SIZE; the first is the headline")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default="", help="where to write the JPEGs (default: a temporary folder)")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--suite", choices=("decode", "tiers"), default="decode",
                        help="decode: our pipeline against the torchvision-equivalent one; tiers: folder against "
                             "shards and re-encoded tiers")
    parser.add_argument("--corpus", type=int, default=2000, help="tiers: training JPEGs of 500x375 to generate")
    parser.add_argument("--size", type=int, default=224, help="tiers: training side")
    args = parser.parse_args()

    torch.set_num_threads(1)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
              f"Pillow {Image.__version__}"
    if args.suite == "tiers":
        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(args.folder or temporary)
            # the corpus and its tiers are written on every core (kept when --folder already holds them) ...
            write_corpus(folder / "corpus", train=args.corpus, val=max(4, args.corpus // 50), classes=4)
            # ... then measured on one
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
            main_tiers(args, folder, machine)
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as one worker has
    configs = []
    for item in args.configs.split(","):
        shape, size = item.split("@")
        width, height = shape.split("x")
        configs.append((int(width), int(height), int(size)))

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.folder or temporary)
        results = [measure(c, folder, args.images, args.batch, args.repeats) for c in configs]

    print(f"\nloader images per CPU-second, one process pinned to one core (JPEG quality 90, "
          f"median of {args.repeats}; random-resized crop + flip -> uint8 batch)\n")
    print("| stored JPEG | crop to | pipeline | images/s per core | vs baseline |")
    print("|---|---|---|---:|---:|")
    for r in results:
        for name, p in r["pipelines"].items():
            print(f"| {r['width']}x{r['height']} ({r['mean_jpeg_kb']:.0f} KB) | {r['size']} | {name} | "
                  f"{p['images_per_cpu_s']:.0f} | {p['ratio']:.2f}x |")
    print(f"\n{machine}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
