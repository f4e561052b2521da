"""Time one optimizer step over ResNet-50's parameters (161 tensors, 25,557,032 values).

Compared in the same run, steps interleaved round by round so that load from other processes
falls on all of them alike: torch.optim.SGD(foreach=True) as the baseline, our LARS (multi-tensor
and reference loop), our LAMB, and timm's ``Lars`` when timm is importable or its lars.py is
given with ``--timm-lars PATH`` (that file needs only torch). Prints a table of median step
times, their ratio to the baseline's median ("x SGD") and the median over rounds of the ratio
within a round ("x SGD/round", steadier on a shared machine), and writes JSON.

    PYTHONPATH=src python benchmarks/optimizer_step.py --json optimizer_step.json
    PYTHONPATH=src python benchmarks/optimizer_step.py --device cuda --repeats 100
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from largebatch.optim import LAMB, LARS

RESNET50_TENSORS, RESNET50_VALUES = 161, 25_557_032


def resnet50_shapes(num_classes: int = 1000) -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's resnet50 in model order (bottleneck blocks 3-4-6-3,
    stride on the 3x3 convolution, a 1x1 projection with BatchNorm on each stage's first block)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    in_channels = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for block in range(blocks):
            out_channels = width * 4
            shapes += [(width, in_channels, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (out_channels, width, 1, 1), (out_channels,), (out_channels,)]
            if block == 0:
                shapes += [(out_channels, in_channels, 1, 1), (out_channels,), (out_channels,)]
            in_channels = out_channels
    return shapes + [(num_classes, 2048), (num_classes,)]


def model_shapes() -> tuple[list[tuple[int, ...]], str]:
    """ResNet-50's shapes from largebatch.models when it has the model, else from the list above."""
    try:
        from largebatch import models
        if "resnet50" in models.list_models():
            model = models.build("resnet50", num_classes=1000)
            return [tuple(p.shape) for p in model.parameters()], "largebatch.models resnet50"
    except Exception:  # noqa: BLE001  (any failure: fall back to the known layout)
        pass
    return resnet50_shapes(), "torchvision resnet50 layout"


def load_timm_lars(path: str | None) -> type | None:
    if path:
        spec = importlib.util.spec_from_file_location("timm_lars", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.Lars
    try:
        from timm.optim import Lars
        return Lars
    except ImportError:
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per optimizer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per optimizer first")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--timm-lars", default=None, help="path to timm's optim/lars.py, if timm is not installed")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile(optimizer.step) of our multi-tensor LARS (compiles first)")
    parser.add_argument("--only", default="", help="comma-separated subset of the optimizer labels to run")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    shapes, source = model_shapes()
    values = sum(torch.Size(s).numel() for s in shapes)
    assert (len(shapes), values) == (RESNET50_TENSORS, RESNET50_VALUES), (len(shapes), values)
    generator = torch.Generator().manual_seed(0)
    initial = [(0.05 * torch.randn(s, generator=generator)).to(device) for s in shapes]
    gradients = [(1e-3 * torch.randn(s, generator=generator)).to(device) for s in shapes]

    # label -> (factory over a parameter list, whether it writes into p.grad)
    candidates: dict[str, tuple[Callable[[list], torch.optim.Optimizer], bool]] = {
        "torch SGD foreach (baseline)": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4,
                                                                   foreach=True), False),
        "LARS multi-tensor (ours)": (lambda p: LARS(p, lr=0.1, weight_decay=5e-4), False),
        "LARS reference loop (ours)": (lambda p: LARS(p, lr=0.1, weight_decay=5e-4, foreach=False), False),
        "LAMB multi-tensor (ours)": (lambda p: LAMB(p, lr=1e-3, weight_decay=1e-2), False),
    }
    timm_lars = load_timm_lars(args.timm_lars)
    if timm_lars is not None:
        # timm's Lars scales p.grad in place: each of its steps gets a fresh copy of the gradient.
        candidates["timm Lars"] = (lambda p: timm_lars(p, lr=0.1, momentum=0.9, weight_decay=5e-4), True)
    if args.only:
        wanted = [label.strip() for label in args.only.split(",")]
        candidates = {k: v for k, v in candidates.items() if k in wanted or k.startswith("torch SGD")}

    runs = {}
    for label, (factory, writes_grad) in candidates.items():
        params = [torch.nn.Parameter(w.clone()) for w in initial]
        for p, g in zip(params, gradients):
            p.grad = g.clone() if writes_grad else g
        optimizer = factory(params)
        runs[label] = (params, optimizer.step, writes_grad)
    compile_s = None
    if args.compile:
        params = [torch.nn.Parameter(w.clone()) for w in initial]
        for p, g in zip(params, gradients):
            p.grad = g
        step = torch.compile(LARS(params, lr=0.1, weight_decay=5e-4).step)
        start = time.perf_counter()
        step()  # compiles
        synchronize(device)
        compile_s = time.perf_counter() - start
        runs["LARS multi-tensor, compiled (ours)"] = (params, step, False)

    times: dict[str, list[float]] = {label: [] for label in runs}
    load_before = os.getloadavg()
    for round_index in range(args.warmup + args.repeats):
        for label, (params, step, writes_grad) in runs.items():
            if writes_grad:
                for p, g in zip(params, gradients):
                    p.grad.copy_(g)
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if round_index >= args.warmup:
                times[label].append(time.perf_counter() - start)
    load_after = os.getloadavg()

    baseline_samples = times["torch SGD foreach (baseline)"]
    baseline = statistics.median(baseline_samples)
    rows = []
    for label, samples in times.items():
        median = statistics.median(samples)
        # the ratio within each round as well: robust to load that changes between rounds
        round_ratio = statistics.median(s / b for s, b in zip(samples, baseline_samples))
        rows.append({"optimizer": label, "median_ms": 1e3 * median, "min_ms": 1e3 * min(samples),
                     "max_ms": 1e3 * max(samples), "ratio_to_sgd": median / baseline,
                     "median_round_ratio_to_sgd": round_ratio, "samples_ms": [1e3 * s for s in samples]})

    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"one step over {len(shapes)} tensors, {values:,} values ({source}); {machine}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} steps after {args.warmup} warmup; "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}"
          + (f"; torch.compile took {compile_s:.0f} s" if compile_s is not None else ""))
    print(f"{'optimizer':36s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s} {'x SGD':>7s} {'x SGD/round':>12s}")
    for row in rows:
        print(f"{row['optimizer']:36s} {row['median_ms']:10.1f} {row['min_ms']:8.1f} {row['max_ms']:8.1f} "
              f"{row['ratio_to_sgd']:7.2f} {row['median_round_ratio_to_sgd']:12.2f}")
    if args.json:
        result = {"device": str(device), "machine": machine, "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "tensors": len(shapes), "values": values,
                  "shapes_from": source, "repeats": args.repeats, "warmup": args.warmup,
                  "load_average_before": load_before, "load_average_after": load_after, "compile_s": compile_s,
                  "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "results": rows}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
