"""What augmentation costs: images/s with and without it, measured in the same run.

1. Small images, batched on the training device (``largebatch.augment``): for each level, on
   random 28x28 Fashion-MNIST-shaped batches, the augmentation alone (uint8 batch -> augmented,
   normalised floats) and a whole fast_resnet training step (augment, normalise, forward,
   backward, LARS step), levels interleaved, repeated; ratios are against ``none`` in the same run.
2. ImageNet-size images, per image in a loader worker (``largebatch.data.transforms``): decode +
   the level's per-image transform of JPEGs written by ``benchmarks/loader.py`` (500x375, about
   107 KB), one process pinned to one core, in CPU seconds; ``strong`` is ``extended`` here.
   Then the batch-level part of ``strong`` (random erasing, mixup/cutmix) on 224x224 batches on
   the device, for comparison with what one worker core delivers.

On CPU, times are CPU seconds of this one process (less disturbed by other load than wall time);
on CUDA, wall time between synchronisations.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/augment.py --json benchmarks/results/augment.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import write_images  # noqa: E402  (benchmarks/ is not a package)

from largebatch import models  # noqa: E402
from largebatch.augment import LEVELS, BatchAugmenter, batch_loss  # noqa: E402
from largebatch.data import ImageFileDataset, Normalizer  # noqa: E402
from largebatch.data.transforms import train_transform  # noqa: E402
from largebatch.optim.lars import LARS  # noqa: E402


class Clock:
    """CPU seconds of this process on CPU; wall seconds after a synchronisation on CUDA."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()


def small_images(device: torch.device, batch: int, steps: int, repeats: int) -> list[dict]:
    clock = Clock(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    normalizer = Normalizer((0.286,), (0.353,), device, channels_last=True)
    model = models.build("fast_resnet", num_classes=10, in_channels=1).to(device, memory_format=torch.channels_last)
    optimizer = LARS(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    augmenters = {level: BatchAugmenter(level, 10, 28, seed=0, global_batch=batch) for level in LEVELS}

    def augment_only(level: str, step: int) -> None:
        out, targets = augmenters[level](images, labels, step, 0)
        normalizer(out)

    def train_step(level: str, step: int) -> None:
        augmenter = augmenters[level]
        out, targets = augmenter(images, labels, step, 0)
        loss = batch_loss(model(normalizer(out)), targets, augmenter.label_smoothing) / batch
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rates: dict[tuple[str, str], list[float]] = {(kind, level): [] for kind in ("augment", "step") for level in LEVELS}
    for repeat in range(repeats + 1):  # the first round warms up and is not counted
        for kind, work in (("augment", augment_only), ("step", train_step)):
            for level in LEVELS:
                count = steps if kind == "step" else 4 * steps
                start = clock.now()
                for step in range(count):
                    work(level, repeat * count + step)
                if repeat:
                    rates[(kind, level)].append(count * batch / (clock.now() - start))
    rows = []
    for level in LEVELS:
        augment_rate = statistics.median(rates[("augment", level)])
        step_rate = statistics.median(rates[("step", level)])
        # paired: this level's rate over none's in the same round, so that slow drifts of the
        # machine's load cancel
        ratios = [a / b for a, b in zip(rates[("step", level)], rates[("step", "none")])]
        rows.append({"level": level, "batch": batch, "augment_images_per_s": round(augment_rate),
                     "step_images_per_s": round(step_rate), "step_ratio_vs_none": round(statistics.median(ratios), 3),
                     "step_ratio_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)]
                     if len(ratios) > 1 else None,
                     "augment_share_of_step": round(step_rate / augment_rate, 4),
                     "step_runs": [round(r) for r in rates[("step", level)]]})
    return rows


def imagenet_workers(folder: Path, count: int, batch: int, repeats: int) -> list[dict]:
    names = write_images(folder, count, 500, 375)
    transforms = {"none": train_transform("none", 224), "minimal": train_transform("minimal", 224),
                  "extended, crop + flip only": train_transform("extended", 224, color_jitter=0.0, lighting=0.0),
                  "extended, + colour jitter": train_transform("extended", 224, lighting=0.0),
                  "extended": train_transform("extended", 224)}
    datasets = {level: ImageFileDataset(folder, names, [0] * len(names), transform, seed=0)
                for level, transform in transforms.items()}
    rates: dict[str, list[float]] = {level: [] for level in datasets}
    for repeat in range(repeats + 1):  # the first round warms the page cache
        for level, dataset in datasets.items():
            start = time.process_time()
            for first in range(0, count, batch):
                indices = list(range(first, min(count, first + batch)))
                dataset.load_batch(indices, [repeat * count + i for i in indices])
            if repeat:
                rates[level].append(count / (time.process_time() - start))
    base = statistics.median(rates["none"])
    return [{"level": level, "images_per_cpu_s": round(statistics.median(r), 1),
             "ratio_vs_none": round(statistics.median(r) / base, 3), "runs": [round(x, 1) for x in r]}
            for level, r in rates.items()]


def imagenet_batch_part(device: torch.device, batch: int, steps: int, repeats: int) -> dict:
    clock = Clock(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    augmenter = BatchAugmenter("strong", 1000, 224, seed=0, global_batch=batch, channels=3, in_workers=True)
    rates = []
    for repeat in range(repeats + 1):
        start = clock.now()
        for step in range(steps):
            augmenter(images, labels, repeat * steps + step, 0)
        if repeat:
            rates.append(steps * batch / (clock.now() - start))
    return {"level": "strong (erasing + mixup/cutmix, batched)", "batch": batch,
            "images_per_s": round(statistics.median(rates)), "runs": [round(r) for r in rates]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=0, help="small-image micro-batch (0: 128 on CPU, 256 on CUDA)")
    parser.add_argument("--steps", type=int, default=0, help="training steps per level and round (0: 3 CPU, 50 CUDA)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds for the ImageNet parts")
    parser.add_argument("--rounds", type=int, default=12, help="rounds of the small-image part, levels interleaved")
    parser.add_argument("--jpegs", type=int, default=60, help="ImageNet-size JPEGs per round")
    parser.add_argument("--skip-imagenet", action="store_true")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    batch = args.batch or (256 if device.type == "cuda" else 128)
    steps = args.steps or (50 if device.type == "cuda" else 3)
    small = small_images(device, batch, steps, args.rounds)

    unit = "images per CPU-second, 1 thread" if device.type == "cpu" else "images/s"
    print(f"\n1. 28x28 batches on {device}: augmentation alone and a fast_resnet training step "
          f"(micro-batch {batch}, {steps} steps per level per round; {unit}; median of {args.rounds} rounds)\n")
    print("| level | augmentation alone | training step | step vs none (quartiles) | augmentation share of the step |")
    print("|---|---:|---:|---:|---:|")
    for r in small:
        quartiles = r["step_ratio_quartiles"]
        spread = f" ({quartiles[0]:.2f}-{quartiles[2]:.2f})" if quartiles else ""
        print(f"| {r['level']} | {r['augment_images_per_s']:,} | {r['step_images_per_s']:,} | "
              f"{r['step_ratio_vs_none']:.2f}x{spread} | {100 * r['augment_share_of_step']:.1f}% |")
    result = {"device": str(device), "small_images": small}

    if not args.skip_imagenet:
        with tempfile.TemporaryDirectory() as temporary:
            workers = imagenet_workers(Path(temporary), args.jpegs, 32, args.repeats)
        batch_part = imagenet_batch_part(device, 64 if device.type == "cpu" else 256, 3 if device.type == "cpu" else 20,
                                         args.repeats)
        print(f"\n2. ImageNet-size JPEGs (500x375, quality 90) to 224x224 in one loader process pinned to one core "
              f"(images per CPU-second, median of {args.repeats})\n")
        print("| level | per-image transform in the worker | vs none |")
        print("|---|---:|---:|")
        for r in workers:
            name = r["level"] + (" (= strong's per-image part)" if r["level"] == "extended" else "")
            print(f"| {name} | {r['images_per_cpu_s']:,.0f} | {r['ratio_vs_none']:.2f}x |")
        print(f"\nstrong's batch-level part on {device} (224x224, batch {batch_part['batch']}): "
              f"{batch_part['images_per_s']:,} {unit}")
        result.update(imagenet_workers=workers, imagenet_batch_part=batch_part)

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name()}"
    print(f"\n{machine}")
    result["machine"] = machine
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
