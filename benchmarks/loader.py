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
"""

from __future__ import annotations

import argparse
import json
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
    args = parser.parse_args()

    torch.set_num_threads(1)
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
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
              f"Pillow {Image.__version__}"
    print(f"\n{machine}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
