"""Training images/s on one device: a plain reference loop against our engine, same model, same
batch, same run; and the input side: what our loader decodes against what the model consumes.

Synthetic images, so the loops measure compute. Each loop is warmed up (``--warmup`` steps:
cuDNN algorithm search, torch.compile), then timed over ``--steps`` steps in ``--repeats``
interleaved rounds (reference, ours, reference, ours ...: drift in the machine's load hits both);
the median round counts.

(a) ``reference``: written the way PyTorch's ImageNet example trains (pytorch/examples,
    imagenet/main.py): fp32, eager, contiguous NCHW, torch.optim.SGD(lr 0.1, momentum 0.9,
    weight_decay 1e-4); per batch: forward, cross-entropy, top-1/top-5 accuracy, ``loss.item()``,
    ``zero_grad()``, ``loss.backward()``, ``step()``; the input already normalised float on the
    device (free input: the reference pays nothing for it).
(b) ``ours``: the step of ``largebatch.train``: ``Precision.build("auto")`` (bf16 autocast on
    CUDA, fp32 on CPU; ``--precision`` to choose), channels_last model and input, torch.compile (``--compile``, on by default
    on CUDA), the optimizer of ``build_optimizer`` (default config: LARS; ``--recipe``: the
    recipe's), uint8 micro-batches in host memory (pinned on CUDA, as the loader delivers them)
    copied ahead on a side stream (``largebatch.data.prefetch``), normalised on the device by
    ``Normalizer``, ``forward_backward`` with accumulation when ``--micro-batch-size`` is smaller
    than ``--batch-size``, the optimizer step skipped on the device when a gradient is not finite
    (``GuardedStep``), and the losses read once every ``LOG_EVERY`` steps (the engine's log boundary).
(c) ``timm-style`` (only when ``import timm`` works and timm has the model): timm.create_model,
    AMP (fp16 + GradScaler on CUDA, timm's default; bf16 on CPU), channels_last, timm's SGD.

Input side (3-channel models of 64 pixels or more): ``--loader-images`` ImageNet-sized JPEGs
(500x375, quality 90, about 107 KB, written by benchmarks/loader.py's writer) in the ImageNet
folder layout, read through ``largebatch.data`` (ImageFileDataset; the training transform of
``--augmentation``, by default the paper's minimal one; ``--loader-workers`` processes, by default
what training uses on this machine: all cores but the training process's own), timed over warm
passes, and compared with the model's images/s.

    PYTHONPATH=src python benchmarks/throughput.py --model resnet50 --batch-size 256 --device cuda \\
        --json benchmarks/results/throughput-resnet50-h100.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from largebatch import models
from largebatch.config import AUGMENTATIONS, DataConfig, OptimizerConfig, load_config
from largebatch.data import STATS, ImageFileDataset, Normalizer, imagenet
from largebatch.data.loader import file_batches
from largebatch.data.prefetch import available_cores, machine_input_settings, prefetch_to_device
from largebatch.data.transforms import train_transform
from largebatch.derive import split_batch
from largebatch.errors import ConfigError, UserError
from largebatch.optim import build_optimizer
from largebatch.precision import PRECISIONS, Precision
from largebatch.optim.guard import GuardedStep
from largebatch.train import forward_backward, set_lr

LOG_EVERY = 20  # the default run.log_every

JPEG_WIDTH, JPEG_HEIGHT = 500, 375  # about the mean ImageNet training image


# --- devices ---------------------------------------------------------------------------------

def choose_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to this torch build; use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {available_cores()} cores, {torch.get_num_threads()} torch threads"


# --- the loops -------------------------------------------------------------------------------

def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...]) -> list[torch.Tensor]:
    """Precision at k, in percent, as the ImageNet example computes it every batch."""
    with torch.no_grad():
        _, predicted = output.topk(max(topk), 1, True, True)
        correct = predicted.t().eq(target.view(1, -1).expand_as(predicted.t()))
        return [correct[:k].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / target.size(0)) for k in topk]


class ReferenceLoop:
    """(a) PyTorch's ImageNet example: fp32, eager, NCHW, torch.optim.SGD, one batch per step."""

    name = "reference"

    def __init__(self, model_name: str, num_classes: int, channels: int, size: int, batch: int,
                 device: torch.device, seed: int):
        torch.manual_seed(seed)
        self.model = models.build(model_name, num_classes=num_classes, in_channels=channels).to(device).train()
        self.criterion = nn.CrossEntropyLoss().to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(batch, channels, size, size, generator=generator).to(device)
        self.target = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
        self.topk = (1, min(5, num_classes))
        self.loss_sum, self.top1_sum = 0.0, torch.zeros(1, device=device)
        self.settings = {"precision": "fp32", "memory_format": "contiguous", "compile": False,
                         "optimizer": "torch.optim.SGD(momentum=0.9, weight_decay=1e-4)",
                         "input": "normalised float, already on the device"}

    def step(self) -> None:
        output = self.model(self.images)
        loss = self.criterion(output, self.target)
        acc1, _ = accuracy(output, self.target, self.topk)
        self.loss_sum += loss.item() * self.images.size(0)  # the example's AverageMeter.update(loss.item(), n)
        self.top1_sum += acc1  # the example keeps accuracies as tensors
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def gradients(self) -> None:
        self.criterion(self.model(self.images), self.target).backward()


class OurLoop:
    """(b) largebatch's training step with its best settings for the device."""

    name = "ours"

    def __init__(self, model_name: str, num_classes: int, channels: int, size: int, batch: int, micro_batch: int,
                 device: torch.device, compile_model: bool, optimizer_config: OptimizerConfig, prefetch_depth: int,
                 seed: int, precision: str = "auto"):
        torch.manual_seed(seed)
        self.device, self.batch = device, batch
        self.precision = Precision.build(precision, device)
        model = models.build(model_name, num_classes=num_classes, in_channels=channels)
        self.model = model.to(device=device, dtype=self.precision.parameter_dtype,
                              memory_format=torch.channels_last).train()
        self.train_model = torch.compile(self.model) if compile_model else self.model
        self.lr = optimizer_config.lr
        self.optimizer = build_optimizer(optimizer_config, self.model, self.lr)
        mean, std = STATS["imagenet" if channels == 3 else "fashion-mnist"]
        self.normalizer = Normalizer(mean, std, device, channels_last=True, dtype=self.precision.parameter_dtype)
        # Two steps of uint8 micro-batches in host memory, channels-last and (on CUDA) pinned, as
        # the loader's workers deliver them; each step copies them to the device again.
        generator = torch.Generator().manual_seed(seed)
        accumulation = split_batch(batch, 1, micro_batch).accumulation_steps
        pool = []
        for _ in range(2):
            step = []
            for _ in range(accumulation):
                images = torch.randint(0, 256, (micro_batch, size, size, channels), dtype=torch.uint8,
                                       generator=generator).permute(0, 3, 1, 2)
                labels = torch.randint(0, num_classes, (micro_batch,), generator=generator)
                if device.type == "cuda":
                    images, labels = images.pin_memory(), labels.pin_memory()
                step.append((images, labels))
            pool.append(step)
        self.stream = prefetch_to_device(itertools.cycle(pool), device, prefetch_depth)
        self.losses: list[float] = []
        self.window: list[torch.Tensor] = []
        self.guarded_step = GuardedStep(self.precision.scaler)
        self.settings = {"precision": self.precision.name, "memory_format": "channels_last",
                         "compile": compile_model, "optimizer": type(self.optimizer).__name__,
                         "optimizer_config": {k: getattr(optimizer_config, k) for k in
                                              ("name", "lr", "momentum", "weight_decay", "trust_coefficient")},
                         "micro_batch_size": micro_batch, "accumulation_steps": accumulation,
                         "device_prefetch": prefetch_depth if device.type == "cuda" else 0,
                         "input": "uint8 in host memory" + (", pinned, copied ahead on a side stream"
                                                            if device.type == "cuda" else "")}

    def step(self) -> None:
        set_lr(self.optimizer, self.lr)
        loss_sum = forward_backward(self.train_model, next(self.stream), self.normalizer, self.precision, self.batch,
                                    ddp=False)
        self.window.append(loss_sum)
        self.guarded_step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        if len(self.window) == LOG_EVERY:  # the engine's log boundary: one host read for the window
            self.flush()

    def flush(self) -> None:
        """Read the losses of the steps since the last read (the end of a timed round is a boundary)."""
        if self.window:
            self.losses += [value / self.batch for value in torch.stack(self.window).tolist()]
            self.window = []

    def gradients(self) -> None:
        forward_backward(self.train_model, next(self.stream), self.normalizer, self.precision, self.batch, ddp=False)


class TimmLoop:
    """(c) timm's way: timm.create_model, AMP, channels_last, timm's SGD."""

    name = "timm-style"

    def __init__(self, timm, model_name: str, num_classes: int, channels: int, size: int, batch: int,
                 device: torch.device, seed: int):
        torch.manual_seed(seed)
        self.model = timm.create_model(model_name, num_classes=num_classes, in_chans=channels)
        self.model = self.model.to(device).to(memory_format=torch.channels_last).train()
        self.device = device
        self.dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.optimizer = timm.optim.create_optimizer_v2(self.model, "sgd", lr=0.1, weight_decay=1e-4, momentum=0.9)
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(batch, channels, size, size, generator=generator).to(device).contiguous(
            memory_format=torch.channels_last)
        self.target = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
        self.settings = {"precision": "fp16 + GradScaler" if self.scaler else "bf16", "memory_format": "channels_last",
                         "compile": False, "optimizer": f"timm {type(self.optimizer).__name__}",
                         "input": "normalised float, already on the device"}

    def _loss(self) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype):
            return F.cross_entropy(self.model(self.images), self.target)

    def step(self) -> None:
        loss = self._loss()
        self.optimizer.zero_grad()
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def gradients(self) -> None:
        self._loss().backward()


def timm_loop(model_name: str, *arguments) -> TimmLoop | None:
    """The timm-style loop when timm imports and knows the model, else None."""
    try:
        import timm
        import timm.optim
    except Exception:  # not installed, or built against another torch
        return None
    if not timm.list_models(model_name):
        return None
    return TimmLoop(timm, model_name, *arguments)


# --- timing ----------------------------------------------------------------------------------

def time_steps(loop, steps: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process's threads) for ``steps`` steps."""
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loop.step()
    if hasattr(loop, "flush"):
        loop.flush()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def time_optimizer_step(loop, device: torch.device, repeats: int = 10) -> float:
    """Seconds per optimizer step alone (on the gradients of one more batch)."""
    loop.gradients()
    loop.optimizer.step()  # creates any missing state
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        loop.optimizer.step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    loop.optimizer.zero_grad(set_to_none=True)
    return seconds


def measure_loops(loops: list, batch: int, steps: int, warmup: int, repeats: int,
                  device: torch.device) -> dict[str, dict[str, Any]]:
    for loop in loops:
        started = time.perf_counter()
        for _ in range(warmup):
            loop.step()
        synchronize(device)
        loop.warmup_s = time.perf_counter() - started
        print(f"  {loop.name}: {warmup} warm-up steps in {loop.warmup_s:.1f} s", flush=True)
    rates: dict[str, list[float]] = {loop.name: [] for loop in loops}
    cpu_rates: dict[str, list[float]] = {loop.name: [] for loop in loops}
    peaks: dict[str, int] = {loop.name: 0 for loop in loops}
    for round_index in range(repeats):
        for loop in loops:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            wall, cpu = time_steps(loop, steps, device)
            rates[loop.name].append(steps * batch / wall)
            cpu_rates[loop.name].append(steps * batch / cpu)
            if device.type == "cuda":
                peaks[loop.name] = max(peaks[loop.name], torch.cuda.max_memory_allocated(device))
        print(f"  round {round_index + 1}/{repeats}: " +
              ", ".join(f"{name} {values[-1]:,.1f} img/s" for name, values in rates.items()), flush=True)
    results = {}
    for loop in loops:
        results[loop.name] = {"images_per_s": statistics.median(rates[loop.name]),
                              "rounds": [round(r, 2) for r in rates[loop.name]],
                              # on a CPU shared with other work, CPU seconds are disturbed less than wall time
                              "images_per_cpu_s": (statistics.median(cpu_rates[loop.name])
                                                   if device.type == "cpu" else None),
                              "warmup_s": round(loop.warmup_s, 2),
                              "peak_memory_bytes": peaks[loop.name] if device.type == "cuda" else None,
                              "optimizer_step_ms": round(time_optimizer_step(loop, device) * 1e3, 3),
                              **loop.settings}
    return results


# --- the input side --------------------------------------------------------------------------

def jpeg_writer():
    """benchmarks/loader.py's ``write_images`` (ImageNet-like JPEGs), loaded by path."""
    spec = importlib.util.spec_from_file_location("loader_benchmark", Path(__file__).with_name("loader.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_images


def measure_loader(folder: Path, images: int, size: int, batch: int, workers: int, loader_prefetch: int,
                   augmentation: str, pin_memory: bool) -> dict[str, Any]:
    """Training-pipeline images/s of our loader over ``images`` JPEGs in ImageNet layout, read
    repeatedly (new stream positions, so new random crops). Untimed first: one pass over the files
    (page cache) and at least one batch per worker (process start); timed: at least two passes and
    at least 8 batches per worker, so the start and the end of the window weigh little."""
    class_folder = folder / "train" / "n00000000"
    jpeg_writer()(class_folder, images, JPEG_WIDTH, JPEG_HEIGHT)
    files = imagenet.list_split(folder, "train", use_cache=False)
    data = DataConfig()
    transform = train_transform(augmentation, size, data.color_jitter, data.lighting, data.fast_decode)
    dataset = ImageFileDataset(files.folder, files.files, files.labels, transform, seed=0)
    batch = min(batch, images)
    warm_batches = max(math.ceil(images / batch), workers)
    timed_batches = math.ceil(max(2 * images, 8 * max(1, workers) * batch) / batch)
    requests = []
    for index in range(warm_batches + timed_batches):
        indices = torch.arange(index * batch, (index + 1) * batch)
        requests.append((indices % images, indices))  # stream positions keep growing: new crops
    received, start = 0, time.perf_counter()
    for index, loaded in enumerate(file_batches(dataset, requests, workers, pin_memory, loader_prefetch)):
        if index == warm_batches - 1:
            start = time.perf_counter()
        elif index >= warm_batches:
            received += len(loaded.labels)
    seconds = time.perf_counter() - start
    kilobytes = sum(os.path.getsize(class_folder / name) for name in os.listdir(class_folder)) / images / 1024
    return {"images": images, "image_size": size, "jpeg": f"{JPEG_WIDTH}x{JPEG_HEIGHT}",
            "mean_jpeg_kb": round(kilobytes, 1), "augmentation": augmentation, "fast_decode": data.fast_decode,
            "workers": workers, "cores": available_cores(), "batch": batch, "timed_images": received,
            "images_per_s": received / seconds, "images_per_s_per_worker": received / seconds / max(1, workers)}


# --- the command -----------------------------------------------------------------------------

def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50", help="model name (default: resnet50)")
    parser.add_argument("--batch-size", type=int, default=0, metavar="N",
                        help="images per optimizer step (default: 256 on CUDA, 16 on CPU)")
    parser.add_argument("--micro-batch-size", type=int, default=0, metavar="N",
                        help="ours: images per forward/backward pass, accumulated up to the batch (0: the batch)")
    parser.add_argument("--steps", type=int, default=0, metavar="N",
                        help="timed steps per round (default: 20 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=-1, metavar="N",
                        help="untimed steps first (default: 5 on CUDA, 1 on CPU)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N",
                        help="interleaved timed rounds; the median counts (default: 3)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="ours: torch.compile the model (default: on for CUDA, off for CPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="ours: numeric precision (default: auto, bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--recipe", default="", help="ours: take the optimizer from this recipe "
                        "(default: the default optimizer config, LARS)")
    parser.add_argument("--image-size", type=int, default=0, metavar="N",
                        help="image side in pixels (default: the model's, 224 for ImageNet models)")
    parser.add_argument("--prefetch", type=int, default=-1, metavar="N",
                        help="ours: steps copied to the GPU ahead (-1: automatic, 1 on CUDA)")
    parser.add_argument("--no-timm", action="store_true", help="leave out the timm-style loop")
    parser.add_argument("--loader-images", type=int, default=-1, metavar="N",
                        help="JPEGs for the input-side measurement (default: 512 on CUDA, 128 on CPU; 0: skip)")
    parser.add_argument("--loader-workers", type=int, default=-1, metavar="N",
                        help="loader processes (-1: as training on this machine, all cores but one)")
    parser.add_argument("--augmentation", choices=AUGMENTATIONS, default="minimal",
                        help="loader: training augmentation (default: minimal, the paper's ResNet-50 recipe; "
                             "extended: random-resized crop, flip, colour jitter, lighting)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)
    cuda = choose_device(args.device).type == "cuda"
    args.batch_size = args.batch_size or (256 if cuda else 16)
    args.micro_batch_size = args.micro_batch_size or args.batch_size
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup >= 0 else (5 if cuda else 1)
    args.loader_images = args.loader_images if args.loader_images >= 0 else (512 if cuda else 128)
    if args.batch_size < 1 or args.steps < 1 or args.repeats < 1 or args.image_size < 0:
        raise ConfigError("--batch-size, --steps and --repeats must be at least 1, --image-size 0 or more")
    if args.micro_batch_size > args.batch_size or args.batch_size % args.micro_batch_size:
        raise ConfigError(f"--micro-batch-size {args.micro_batch_size} must divide --batch-size {args.batch_size}")
    return args


def format_bytes(count: int | None) -> str:
    return "-" if count is None else f"{count / 2 ** 30:.1f} GiB"


def describe_settings(result: dict[str, Any]) -> str:
    parts = [result["precision"], result["memory_format"], "compiled" if result["compile"] else "eager",
             result["optimizer"]]
    if result.get("accumulation_steps", 1) > 1:
        parts.append(f"{result['accumulation_steps']} x {result['micro_batch_size']} accumulated")
    if result.get("device_prefetch"):
        parts.append(f"prefetch {result['device_prefetch']}")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = choose_device(args.device)
    entry = models.MODELS.get(args.model)
    if entry is None:
        raise ConfigError(f"--model: unknown model '{args.model}' (choose from {', '.join(models.list_models())})")
    size, channels, num_classes = args.image_size or entry.input_size, entry.in_channels, entry.num_classes
    compile_model = device.type == "cuda" if args.compile is None else args.compile
    if args.precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 (with loss scaling) needs a CUDA device; use bf16 or fp32 on CPU")
    optimizer_config = load_config(args.recipe).optimizer if args.recipe else OptimizerConfig()
    settings = machine_input_settings(device.type, workers=args.loader_workers, device_prefetch=args.prefetch)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms (both loops)
    print(f"{args.model}, batch {args.batch_size}, {size}x{size}, on {describe_device(device)}", flush=True)

    loops = [ReferenceLoop(args.model, num_classes, channels, size, args.batch_size, device, args.seed),
             OurLoop(args.model, num_classes, channels, size, args.batch_size, args.micro_batch_size, device,
                     compile_model, optimizer_config, settings.device_prefetch, args.seed, args.precision)]
    timm = None if args.no_timm else timm_loop(args.model, num_classes, channels, size, args.batch_size, device,
                                               args.seed)
    if timm is not None:
        loops.append(timm)
    results = measure_loops(loops, args.batch_size, args.steps, args.warmup, args.repeats, device)
    reference, ours = results["reference"]["images_per_s"], results["ours"]["images_per_s"]

    loader = None
    if args.loader_images and channels == 3 and size >= 64:
        print(f"loader: {args.loader_images} JPEGs, {settings.workers} workers ...", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            loader = measure_loader(Path(folder), args.loader_images, size, args.micro_batch_size, settings.workers,
                                    settings.loader_prefetch, args.augmentation, device.type == "cuda")
        loader["model_images_per_s"] = ours
        loader["bound"] = "input" if loader["images_per_s"] < ours else "compute"
        loader["workers_to_feed_model"] = math.ceil(ours / loader["images_per_s_per_worker"])

    report = {
        "model": args.model, "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size,
        "image_size": size, "device": describe_device(device), "device_type": device.type,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": args.steps,
        "warmup": args.warmup, "repeats": args.repeats,
        "reference_images_per_s": round(reference, 2), "ours_images_per_s": round(ours, 2),
        "ratio": round(ours / reference, 3),
        "cpu_time_ratio": (round(results["ours"]["images_per_cpu_s"] / results["reference"]["images_per_cpu_s"], 3)
                           if device.type == "cpu" else None),
        "timm_images_per_s": round(results["timm-style"]["images_per_s"], 2) if timm is not None else None,
        "reference": results["reference"], "ours": results["ours"], "timm": results.get("timm-style"),
        "loader": loader, "ours_final_losses": [round(x, 4) for x in loops[1].losses[-3:]],
        "command": "PYTHONPATH=src python3 benchmarks/throughput.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
    }
    print_report(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


def print_report(report: dict[str, Any]) -> None:
    labels = {"reference": "reference (PyTorch ImageNet example)", "ours": "ours (largebatch)",
              "timm": "timm-style (AMP, channels_last)"}
    print(f"\n{report['model']}, batch {report['batch_size']}, {report['image_size']}x{report['image_size']}, "
          f"{report['device']}, torch {report['torch']}; median of {report['repeats']} rounds of "
          f"{report['steps']} steps after {report['warmup']} warm-up steps\n")
    cpu = report["device_type"] == "cpu"
    print("| loop | settings | images/s | vs reference | " +
          ("images per CPU-s | vs reference |" if cpu else "peak GPU memory |") + " optimizer step |")
    print("|---|---|---:|---:|" + ("---:|---:|" if cpu else "---:|") + "---:|")
    base = report["reference_images_per_s"]
    for key, label in labels.items():
        result = report[key]
        if result is None:
            continue
        if cpu:
            extra = (f"{result['images_per_cpu_s']:,.1f} | "
                     f"{result['images_per_cpu_s'] / report['reference']['images_per_cpu_s']:.2f}x")
        else:
            extra = format_bytes(result["peak_memory_bytes"])
        print(f"| {label} | {describe_settings(result)} | {result['images_per_s']:,.1f} | "
              f"{result['images_per_s'] / base:.2f}x | {extra} | {result['optimizer_step_ms']:.1f} ms |")
    loader = report["loader"]
    if loader:
        def workers(count: int) -> str:
            return f"{count} worker{'s' if count != 1 else ''}"
        print(f"\ninput side: our loader decodes {loader['images_per_s']:,.1f} images/s with "
              f"{workers(loader['workers'])} on {loader['cores']} cores ({loader['images_per_s_per_worker']:,.1f} "
              f"per worker; {loader['jpeg']} JPEGs of {loader['mean_jpeg_kb']:.0f} KB, {loader['augmentation']} "
              f"augmentation, {loader['image_size']} px); the model trains {loader['model_images_per_s']:,.1f} "
              f"images/s: {loader['bound']}-bound. Feeding the model takes about "
              f"{workers(loader['workers_to_feed_model'])}, and as many cores.")


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_arguments(argv))
    except UserError as error:
        print(f"throughput.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
