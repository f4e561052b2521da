"""Calibration for the planner: measure this machine, write a device preset ``plan`` can use.

``largebatch benchmark`` measures three things and writes them as a JSON preset
(``largebatch plan --device-file PATH``):

- the training rate curve of one model on synthetic data, images/s at several per-iteration
  batches (forward, cross-entropy, backward and a plain SGD step, timed after warm-up, median
  step); the planner interpolates it, and the fit R(b) = R_max b / (b + b_half) is reported;
- the input pipeline: training images one core decodes and augments per second with our loader
  (largebatch.data.ImageFileDataset: JPEG decode, random-resized crop, flip, uint8 batch), in CPU
  seconds of one thread, on JPEGs written for the purpose (or a folder of yours);
- all-reduce time between two local processes (gloo, torch.multiprocessing), at several message
  sizes; the fastest repeat of each size is fitted to the ring alpha-beta model
  T = 2(p-1)/p * n * beta + 2(p-1) * alpha.

So a user calibrates on one node and plans for many. torch is imported inside the functions, so
``largebatch --help`` and ``largebatch plan`` never load it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from largebatch.derive import split_batch
from largebatch.errors import ConfigError

MB = 1e6
CALIBRATION_SIZES_MB = (0.004, 1.0, 4.0, 25.6)


# --- training rate ---------------------------------------------------------------------------

def _input_shape(name: str) -> tuple[int, int]:
    """(channels, size) of a model's input: the cost table first, else the model registry."""
    from largebatch.model_costs import MODEL_COSTS
    if name in MODEL_COSTS:
        return int(MODEL_COSTS[name]["in_channels"]), int(MODEL_COSTS[name]["input_size"])
    from largebatch import models
    if name not in models.MODELS:
        raise ConfigError(f"--model: unknown model '{name}' (choose from {', '.join(models.list_models())})")
    return models.MODELS[name][2], models.default_input_size(name)


def measure_training_rate(model_name: str, batch_size: int = 256, micro_batch_size: int = 0, steps: int = 10,
                          warmup: int = 2, threads: int = 0, channels_last: bool = True, seed: int = 0) -> dict:
    """Training images/s of ``model_name`` on random images: ``batch_size`` images per step, in
    micro-batches of ``micro_batch_size`` (0: one pass), plain SGD; median over ``steps`` steps."""
    import torch
    import torch.nn.functional as F

    from largebatch import models

    if batch_size < 1 or steps < 1 or warmup < 0:
        raise ConfigError("--batch-size and --steps must be >= 1, --warmup >= 0")
    micro = micro_batch_size or batch_size
    if batch_size % micro:
        raise ConfigError(f"--micro-batch-size: {micro} must divide --batch-size {batch_size}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    channels, size = _input_shape(model_name)
    num_classes = 10 if size <= 32 else 1000
    model = models.build(model_name, num_classes=num_classes, in_channels=channels)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    images = torch.randn(micro, channels, size, size).contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (micro,))
    accumulation = split_batch(batch_size, 1, micro).accumulation_steps
    step_seconds = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accumulation):
            loss = F.cross_entropy(model(images), labels) / accumulation
            loss.backward()
        optimizer.step()
        if step >= warmup:
            step_seconds.append(time.perf_counter() - start)
    median = statistics.median(step_seconds)
    return {"model": model_name, "images_per_second": batch_size / median, "batch_size": batch_size,
            "micro_batch_size": micro, "steps": steps, "threads": torch.get_num_threads(),
            "channels_last": channels_last, "median_step_s": median,
            "min_step_s": min(step_seconds), "max_step_s": max(step_seconds)}


def curve_batches(text: str, batch_size: int) -> list[int]:
    """The per-iteration batches of the rate curve: '32,64,128' (the reference batch is added), or
    '' for batch/8, batch/4, batch/2 and batch."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()] if text.strip() else \
            [batch_size // 8, batch_size // 4, batch_size // 2]
    except ValueError:
        raise ConfigError(f"--curve-batches: expected comma-separated integers, got '{text}'") from None
    batches = sorted({b for b in values if b >= 1} | {batch_size})
    if len(batches) < 3 or min(values, default=1) < 1:
        raise ConfigError("--curve-batches: give batch sizes >= 1 that make, with --batch-size, at least three "
                          "different ones (e.g. --curve-batches 64,128 with --batch-size 256)")
    return batches


def measure_training_curve(model_name: str, batches: list[int], steps: int = 10, warmup: int = 2,
                           threads: int = 0, channels_last: bool = True, known: dict | None = None) -> list[dict]:
    """Training images/s at each per-iteration batch (one forward/backward of ``b`` images per
    step); ``known``: an already measured row to reuse for its batch."""
    rows = []
    for batch in batches:
        if known and known["batch_size"] == batch and known["micro_batch_size"] == batch:
            rows.append(known)
        else:
            rows.append(measure_training_rate(model_name, batch, 0, steps, warmup, threads, channels_last))
    return rows


def _synthetic_jpegs(folder: Path, count: int, width: int, height: int) -> list[str]:
    """``count`` JPEGs (quality 90) of smooth colour fields plus noise: about 100 KB at 500x375,
    near the mean size of ImageNet's training JPEGs (~110 KB), so decoding costs about as much."""
    import numpy as np
    from PIL import Image
    names = []
    x, y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    for i in range(count):
        generator = np.random.default_rng(i)
        pixels = np.empty((height, width, 3), np.float32)
        for channel in range(3):
            period = generator.uniform(20, 120)
            pixels[..., channel] = generator.uniform(60, 190) + 40 * np.sin(x / period + generator.uniform(0, 6)) \
                * np.cos(y / (period * 1.3))
        pixels += generator.normal(0, 18, pixels.shape).astype(np.float32)
        name = f"decode_{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name, "JPEG", quality=90)
        names.append(name)
    return names


def measure_decode_rate(images: int = 64, size: int = 224, repeats: int = 3, folder: str | None = None,
                        fast_decode: bool = True) -> dict:
    """Training images one core decodes and augments per second with our loader.

    Decodes ``images`` JPEGs (written here at 500x375, or the .jpg/.jpeg files of ``folder``) to
    ``size`` with random-resized crop and flip (``train_transform('extended')``, colour jitter and
    lighting off) in batches of 32, in this process on one thread; CPU seconds, median of
    ``repeats`` after one untimed round that warms the page cache.
    """
    import torch

    from largebatch.data import ImageFileDataset
    from largebatch.data.transforms import train_transform

    if images < 1 or repeats < 1:
        raise ConfigError("--decode-images and the repeats must be >= 1")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="largebatch-decode-") as temporary:
            if folder:
                root = Path(folder)
                if not root.is_dir():
                    raise ConfigError(f"--decode-folder: {root} is not a folder")
                names = sorted(p.name for p in root.iterdir()
                               if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg"))[:images]
                if not names:
                    raise ConfigError(f"--decode-folder: {root} has no .jpg or .jpeg files")
            else:
                root = Path(temporary)
                names = _synthetic_jpegs(root, images, 500, 375)
            transform = train_transform("extended", size, color_jitter=0.0, lighting=0.0, fast=fast_decode)
            dataset = ImageFileDataset(root, names, [0] * len(names), transform, seed=0)
            kilobytes = sum((root / n).stat().st_size for n in names) / len(names) / 1024
            rates = []
            for repeat in range(repeats + 1):
                start = time.process_time()
                for first in range(0, len(names), 32):
                    indices = list(range(first, min(first + 32, len(names))))
                    batch = dataset.load_batch(indices, [repeat * len(names) + i for i in indices])
                    if batch.error or batch.skipped:
                        raise ConfigError(f"--decode-folder: cannot decode {batch.skipped[0][0] if batch.skipped else ''}"
                                          f" ({batch.error or batch.skipped[0][1]})")
                seconds = time.process_time() - start
                if repeat:
                    rates.append(len(names) / max(seconds, 1e-9))
    finally:
        torch.set_num_threads(previous_threads)
    return {"images_per_second_per_core": statistics.median(rates), "runs": rates, "images": len(names),
            "mean_kilobytes": kilobytes, "size": size, "fast_decode": fast_decode,
            "source": str(folder) if folder else "synthetic 500x375 JPEGs, quality 90"}


def measure_matmul_flops(size: int = 1024, repeats: int = 5, threads: int = 0) -> float:
    """FP32 matrix-multiply FLOP/s: a practical peak for the efficiency figure of a CPU."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / min(times)


# --- all-reduce ------------------------------------------------------------------------------

def _allreduce_worker(rank: int, world_size: int, init_file: str, result_file: str, sizes: list[int],
                      repeats: int, warmup: int, backend: str, threads: int) -> None:
    import torch
    import torch.distributed as dist
    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        rows = []
        for size in sizes:
            # zeros: the sum stays finite however often it is reduced; speed does not depend on values.
            tensor = torch.zeros(max(1, size // 4), dtype=torch.float32)
            for _ in range(warmup):
                dist.all_reduce(tensor)
            seconds = []
            for _ in range(repeats):
                dist.barrier()
                start = time.perf_counter()
                dist.all_reduce(tensor)
                seconds.append(time.perf_counter() - start)
            # A collective ends when its slowest rank does: take each repeat's maximum over ranks.
            slowest = torch.tensor(seconds, dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            rows.append({"bytes": tensor.numel() * 4, "seconds": sorted(slowest.tolist())})
        if rank == 0:
            Path(result_file).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def measure_allreduce(sizes_bytes: list[int], processes: int = 2, repeats: int = 5, warmup: int = 2,
                      backend: str = "gloo", threads: int = 1) -> list[dict]:
    """All-reduce time of FP32 buffers of each size between ``processes`` local processes.

    Returns one row per size: bytes, median seconds, algorithm bandwidth (bytes / time) and bus
    bandwidth (algorithm bandwidth x 2(p-1)/p, the bytes each process actually sends per second
    in a ring, as nccl-tests reports it).
    """
    import torch.multiprocessing as mp
    if processes < 2:
        raise ConfigError("all-reduce needs at least 2 processes")
    with tempfile.TemporaryDirectory(prefix="largebatch-allreduce-") as folder:
        init_file, result_file = str(Path(folder) / "store"), str(Path(folder) / "result.json")
        mp.spawn(_allreduce_worker, args=(processes, init_file, result_file, list(sizes_bytes), repeats,
                                          warmup, backend, threads), nprocs=processes, join=True)
        raw = json.loads(Path(result_file).read_text())
    rows = []
    for entry in raw:
        median = statistics.median(entry["seconds"])
        algorithm_bandwidth = entry["bytes"] / median
        rows.append({"bytes": entry["bytes"], "median_s": median, "min_s": entry["seconds"][0],
                     "max_s": entry["seconds"][-1], "algorithm_bandwidth": algorithm_bandwidth,
                     "bus_bandwidth": algorithm_bandwidth * 2 * (processes - 1) / processes,
                     "processes": processes, "backend": backend})
    return rows


def fit_alpha_beta(sizes_bytes: list[float], seconds: list[float], processes: int) -> tuple[float, float]:
    """Fit of the ring model T = 2(p-1)/p * n / bandwidth + 2(p-1) * latency to measured times.

    Weighted least squares on relative error (weights 1 / T^2), so that the small messages, which
    carry the latency, count as much as the large ones, which carry the bandwidth. Returns
    (bandwidth in bytes/s, latency in seconds per step); a negative intercept (noise) is clipped
    to zero latency.
    """
    if len(sizes_bytes) < 2 or len(set(sizes_bytes)) < 2:
        raise ConfigError("fitting all-reduce times needs at least two different message sizes")
    if min(seconds) <= 0:
        raise ConfigError("all-reduce times must be positive")
    weights = [1 / t ** 2 for t in seconds]
    total = sum(weights)
    mean_n = sum(w * n for w, n in zip(weights, sizes_bytes)) / total
    mean_t = sum(w * t for w, t in zip(weights, seconds)) / total
    covariance = sum(w * (n - mean_n) * (t - mean_t) for w, n, t in zip(weights, sizes_bytes, seconds))
    variance = sum(w * (n - mean_n) ** 2 for w, n in zip(weights, sizes_bytes))
    slope = covariance / variance
    intercept = mean_t - slope * mean_n
    if slope <= 0:
        raise ConfigError("all-reduce time did not grow with message size; run the benchmark again on a quieter machine")
    steps = 2 * (processes - 1)
    bandwidth = steps / processes / slope
    latency = max(0.0, intercept) / steps
    return bandwidth, latency


# --- the preset ------------------------------------------------------------------------------

def _machine() -> dict:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "system": platform.platform()}


def build_preset(training: dict, allreduce_rows: list[dict] | None, peak_flops: float, command: str,
                 curve_rows: list[dict] | None = None, decode: dict | None = None) -> dict:
    """The JSON document ``plan --device-file`` reads (see largebatch.plan.presets): the rate at
    the reference batch, the per-batch curve, the input pipeline and the local all-reduce fit."""
    from largebatch.model_costs import MODEL_COSTS
    from largebatch.plan.curve import fit_saturating
    from largebatch.plan.presets import Device, Network, preset_to_dict
    machine = _machine()
    today = datetime.date.today().isoformat()
    network = None
    intra_bandwidth, intra_latency = 1e9, 50e-6
    if allreduce_rows:
        processes = allreduce_rows[0]["processes"]
        # The fastest repeat of each size: the one least disturbed by other processes.
        bandwidth, latency = fit_alpha_beta([r["bytes"] for r in allreduce_rows],
                                            [r["min_s"] for r in allreduce_rows], processes)
        intra_bandwidth, intra_latency = bandwidth, latency
        network = Network(name="measured-local", description=f"{allreduce_rows[0]['backend']} all-reduce between "
                          f"{processes} local processes", bandwidth=bandwidth, latency=latency,
                          source=f"largebatch benchmark, {today}")
    model = training["model"]
    macs = MODEL_COSTS[model]["macs"] if model in MODEL_COSTS else None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    curve: dict = {}
    measured_curve = None
    if curve_rows:
        batches = tuple(float(r["batch_size"]) for r in curve_rows)
        rates = tuple(float(r["images_per_second"]) for r in curve_rows)
        try:
            max_rate, half_batch = fit_saturating(batches, rates)
        except ConfigError:  # times that do not grow with the batch: noise; the table is still usable
            max_rate, half_batch = None, None
        curve = {"curve_batches": batches, "curve_images_per_second": rates,
                 "curve_source": f"largebatch benchmark, {today}: {model} at batch "
                                 f"{', '.join(f'{b:g}' for b in batches)}"}
        measured_curve = {"rows": curve_rows, "fit": {"max_images_per_second": max_rate, "half_batch": half_batch}}
    pipeline: dict = {}
    if decode:
        pipeline = {"cores_per_node": _cores(), "decode_images_per_second": decode["images_per_second_per_core"],
                    "decoder": "same-cores",
                    "input_source": f"largebatch benchmark, {today}: our loader on one core "
                                    f"({decode['source']}, {decode['size']} px)"}
    device = Device(
        name="calibrated", description=f"{machine['cpu']}, {training['threads']} threads, torch {machine['torch']}",
        peak_flops=peak_flops, precision="fp32 (measured matmul)", memory_bytes=float(memory),
        devices_per_node=1, intra_bandwidth=intra_bandwidth, intra_latency=intra_latency,
        network=network.name if network else "ethernet-10g", links_per_node=1,
        reference_model=model, reference_images_per_second=training["images_per_second"],
        reference_macs=macs, reference_batch=training["batch_size"],
        source=f"largebatch benchmark, {today}", **curve, **pipeline)
    return preset_to_dict(device, network, {"machine": machine, "command": command, "training": training,
                                            "curve": measured_curve, "decode": decode,
                                            "allreduce": allreduce_rows or []})


def _cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# --- command line ----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="fast_resnet", metavar="NAME", help="model to time (default: fast_resnet)")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N",
                        help="images per training step on this machine (default: 256)")
    parser.add_argument("--micro-batch-size", type=int, default=0, metavar="N",
                        help="images per forward/backward pass; 0: the whole batch (default: 0)")
    parser.add_argument("--steps", type=int, default=10, metavar="N", help="timed steps (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed steps first (default: 2)")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="torch threads; 0: all cores (default: 0)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels-last memory format, as training uses by default (default: on)")
    parser.add_argument("--allreduce-sizes", default=",".join(f"{s:g}" for s in CALIBRATION_SIZES_MB), metavar="MB,MB",
                        help="all-reduce message sizes in MB to fit the alpha-beta model "
                             f"(default: {','.join(f'{s:g}' for s in CALIBRATION_SIZES_MB)})")
    parser.add_argument("--curve-batches", default="", metavar="N,N",
                        help="per-iteration batches of the rate curve, besides --batch-size (default: "
                             "--batch-size / 8, / 4, / 2)")
    parser.add_argument("--skip-curve", action="store_true", help="measure the rate at --batch-size only")
    parser.add_argument("--decode-images", type=int, default=64, metavar="N",
                        help="JPEGs decoded to time the input pipeline (default: 64)")
    parser.add_argument("--decode-folder", default=None, metavar="DIR",
                        help="decode the .jpg/.jpeg files of this folder instead of synthetic 500x375 JPEGs")
    parser.add_argument("--decode-size", type=int, default=224, metavar="PX",
                        help="training image size for the decode timing (default: 224)")
    parser.add_argument("--skip-decode", action="store_true", help="do not time the input pipeline")
    parser.add_argument("--repeats", type=int, default=5, metavar="N", help="timed all-reduces per size (default: 5)")
    parser.add_argument("--skip-allreduce", action="store_true", help="do not time the all-reduce")
    parser.add_argument("--output", default="largebatch-device.json", metavar="PATH",
                        help="where to write the preset (default: largebatch-device.json)")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(x) * MB) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--allreduce-sizes: expected comma-separated MB, got '{text}'") from None
    if len(set(sizes)) < 2 or min(sizes) < 4:
        raise ConfigError("--allreduce-sizes: give at least two different sizes of 4 bytes or more")
    return sizes


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this measurement."""
    parts = [f"largebatch benchmark --model {args.model} --batch-size {args.batch_size}",
             f"--micro-batch-size {args.micro_batch_size}" if args.micro_batch_size else "",
             f"--steps {args.steps} --warmup {args.warmup}", f"--threads {args.threads}" if args.threads else "",
             "" if args.channels_last else "--no-channels-last",
             "--skip-curve" if args.skip_curve else (f"--curve-batches {args.curve_batches}" if args.curve_batches else ""),
             "--skip-decode" if args.skip_decode else f"--decode-images {args.decode_images} --decode-size {args.decode_size}"
             + (f" --decode-folder {args.decode_folder}" if args.decode_folder else ""),
             "--skip-allreduce" if args.skip_allreduce else f"--allreduce-sizes {args.allreduce_sizes} --repeats {args.repeats}",
             f"--output {args.output}"]
    return " ".join(part for part in parts if part)


def run(args: argparse.Namespace) -> int:
    sizes = None if args.skip_allreduce else _sizes(args.allreduce_sizes)
    batches = None if args.skip_curve else curve_batches(args.curve_batches, args.batch_size)
    if not args.skip_decode and (args.decode_images < 1 or args.decode_size < 8):
        raise ConfigError("--decode-images must be >= 1 and --decode-size >= 8")
    print(f"timing {args.model} training, {args.batch_size} images per step ...", flush=True)
    training = measure_training_rate(args.model, args.batch_size, args.micro_batch_size, args.steps,
                                     args.warmup, args.threads, args.channels_last)
    print(f"  {training['images_per_second']:,.1f} images/s (median step {training['median_step_s'] * 1e3:.1f} ms, "
          f"{training['threads']} threads)")
    curve_rows = None
    if batches:
        print(f"timing the rate curve at {', '.join(map(str, batches))} images per step ...", flush=True)
        curve_rows = measure_training_curve(args.model, batches, args.steps, args.warmup, args.threads,
                                            args.channels_last, known=training)
        for row in curve_rows:
            print(f"  {row['batch_size']:>6}  {row['images_per_second']:>9,.1f} images/s  "
                  f"(median step {row['median_step_s'] * 1e3:.1f} ms)")
    peak = measure_matmul_flops(threads=args.threads)
    print(f"  fp32 matmul: {peak / 1e9:,.1f} GFLOP/s")
    decode = None
    if not args.skip_decode:
        print("timing the input pipeline (decode + random-resized crop + flip, one core) ...", flush=True)
        decode = measure_decode_rate(args.decode_images, args.decode_size, folder=args.decode_folder)
        print(f"  {decode['images_per_second_per_core']:,.1f} images/s per core ({decode['images']} JPEGs, "
              f"{decode['mean_kilobytes']:.0f} KB on average, to {decode['size']} px)")
    rows = None
    if sizes:
        print("timing gloo all-reduce between 2 local processes ...", flush=True)
        rows = measure_allreduce(sizes, processes=2, repeats=args.repeats)
        for row in rows:
            print(f"  {row['bytes'] / MB:>8.3f} MB  {row['median_s'] * 1e3:>9.2f} ms  "
                  f"bus {row['bus_bandwidth'] / 1e9:6.2f} GB/s")
    document = build_preset(training, rows, peak, _command(args), curve_rows, decode)
    if document["measured"].get("curve"):
        fit = document["measured"]["curve"]["fit"]
        if fit["max_images_per_second"]:
            print(f"  curve fit: R(b) = {fit['max_images_per_second']:,.1f} b / (b + {fit['half_batch']:.1f}) images/s")
        else:
            print("  curve fit: the step time did not grow with the batch (a noisy machine?); the measured points "
                  "are used as they are")
    if rows:
        network = document["network"]
        print(f"  fit: {network['bandwidth'] / 1e9:.2f} GB/s, {network['latency'] * 1e6:.1f} us per step")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {output}; plan with: largebatch plan --device-file {output} --model {args.model} "
          f"--processors N [--network ib-hdr]")
    return 0
