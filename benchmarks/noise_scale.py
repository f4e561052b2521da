"""Overhead of measuring the gradient noise scale: training step time with and without the monitor.

Times full training steps of fast_resnet on random 28x28 images (the Fashion-MNIST shape): the
micro-batches' forward and backward, then the LARS step and zero_grad. Two models with the same
initial weights train side by side in the same process(es), steps interleaved (baseline, monitored,
baseline, ...) so that load on the machine falls on both alike:

- ``baseline``: ``largebatch.train.forward_backward``, the training loop's own function;
- ``monitored``: the same loop with the monitor's calls around each micro-batch and
  ``after_backward()`` before the optimizer step, wired as docs/critical-batch.md proposes for
  train.py.

One process: the small batch is a micro-batch (``--micro-batch-size``), the big batch the step.
``--processes 2`` (gloo): the small batch is one process's part, read by the DDP communication hook.
Prints a table (median and spread of each, their ratio, and the median of the per-round ratios)
and writes JSON.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/noise_scale.py [--batch-size 256]
        [--micro-batch-size 64] [--rounds 8] [--processes 1] [--output benchmarks/results/noise_scale.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from largebatch import models  # noqa: E402
from largebatch.config import OptimizerConfig  # noqa: E402
from largebatch.data import Normalizer  # noqa: E402
from largebatch.derive import split_batch  # noqa: E402
from largebatch.noise_scale import NoiseScaleMonitor, format_noise_scale  # noqa: E402
from largebatch.optim import build_optimizer  # noqa: E402
from largebatch.precision import Precision  # noqa: E402
from largebatch.train import forward_backward  # noqa: E402


def forward_backward_measured(model, micro_batches, normalizer, precision, per_process_batch, ddp, monitor,
                              spent: list[float]):
    """train.forward_backward with the monitor's calls (the proposed wiring); adds the CPU seconds
    spent inside the two per-micro-batch calls to ``spent[0]``."""
    device = normalizer.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    for index, (images, labels) in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        with contextlib.nullcontext() if last or not ddp else model.no_sync():
            start = time.process_time()
            monitor.before_micro_batch(index)
            spent[0] += time.process_time() - start
            with precision.autocast():
                logits = model(normalizer(images))
            loss = F.cross_entropy(logits.to(precision.parameter_dtype), labels.to(device, non_blocking=True),
                                   reduction="sum")
            precision.backward(loss / per_process_batch)
            start = time.process_time()
            monitor.after_micro_batch(index, len(labels))
            spent[0] += time.process_time() - start
        loss_sum += loss.detach()
    return loss_sum


def build(model_name: str, world_size: int, device: torch.device, seed: int):
    torch.manual_seed(seed)
    model = models.build(model_name, num_classes=10, in_channels=1).to(device, memory_format=torch.channels_last)
    wrapped = model
    if world_size > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = build_optimizer(OptimizerConfig(), model, lr=1.0)
    return model, wrapped, optimizer


def measure(rank: int, world_size: int, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    precision = Precision.build("fp32", device)
    split = split_batch(args.batch_size, world_size, args.micro_batch_size)
    per_process, micro, accumulation = split.per_process_batch, split.micro_batch_size, split.accumulation_steps
    normalizer = Normalizer((0.286,), (0.353,), device, channels_last=True)
    baseline = build(args.model, world_size, device, seed=0)
    monitored = build(args.model, world_size, device, seed=0)
    monitor = NoiseScaleMonitor(monitored[0], monitored[1], split, smoothing=0.9, every=args.every)
    generator = torch.Generator().manual_seed(rank)
    ddp = world_size > 1

    def step(which: str) -> tuple[float, float, float]:
        """Wall seconds, CPU seconds of this process, and CPU seconds inside the monitor's calls
        (the communication hook's norms run inside backward and are not in the last number)."""
        images = torch.randint(0, 256, (per_process, 1, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (per_process,), generator=generator)
        micro_batches = list(zip(torch.tensor_split(images, accumulation), torch.tensor_split(labels, accumulation)))
        model, wrapped, optimizer = baseline if which == "baseline" else monitored
        spent = [0.0]
        start, start_cpu = time.perf_counter(), time.process_time()
        if which == "baseline":
            forward_backward(wrapped, micro_batches, normalizer, precision, per_process, ddp)
        else:
            forward_backward_measured(wrapped, micro_batches, normalizer, precision, per_process, ddp, monitor, spent)
            inside = time.process_time()
            monitor.after_backward()
            spent[0] += time.process_time() - inside
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, time.process_time() - start_cpu, spent[0]

    for _ in range(args.warmup):
        step("baseline")
        step("monitored")
    times = {"baseline": [], "monitored": []}
    cpu = {"baseline": [], "monitored": []}
    inside = []
    for round_index in range(args.rounds):
        order = ("baseline", "monitored") if round_index % 2 == 0 else ("monitored", "baseline")
        for which in order:
            wall, cpu_s, spent = step(which)
            times[which].append(wall)
            cpu[which].append(cpu_s)
            if which == "monitored":
                inside.append(spent)
    return {"times": times, "cpu": cpu, "inside_monitor": inside, "accumulation_steps": accumulation,
            "micro_batch_size": micro, "per_process_batch": per_process, "noise": monitor.values()}


def _worker(rank: int, world_size: int, args: argparse.Namespace, port: int, out: str) -> None:
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = measure(rank, world_size, args)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="fast_resnet")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch (default: 256)")
    parser.add_argument("--micro-batch-size", type=int, default=64, help="images per forward/backward (default: 64)")
    parser.add_argument("--processes", type=int, default=1, help="gloo processes (default: 1)")
    parser.add_argument("--every", type=int, default=1, help="measure one step in N (default: every step)")
    parser.add_argument("--rounds", type=int, default=8, help="timed steps of each variant (default: 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant first (default: 2)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1),
                        help="torch threads per process (default: $OMP_NUM_THREADS or 1)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "noise_scale.json"))
    args = parser.parse_args()

    if args.processes > 1:
        import tempfile
        import torch.multiprocessing as mp
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, "result.json")
            mp.spawn(_worker, args=(args.processes, args, port, out), nprocs=args.processes, join=True)
            result = json.loads(Path(out).read_text())
    else:
        result = measure(0, 1, args)

    rows = []
    for clock in ("times", "cpu"):
        for name in ("baseline", "monitored"):
            values = result[clock][name]
            rows.append({"clock": "wall" if clock == "times" else "cpu", "variant": name,
                         "median_s": statistics.median(values), "min_s": min(values), "max_s": max(values)})
    wall_ratio = rows[1]["median_s"] / rows[0]["median_s"]
    cpu_ratio = rows[3]["median_s"] / rows[2]["median_s"]
    paired = statistics.median(m / b for b, m in zip(result["times"]["baseline"], result["times"]["monitored"]))
    inside = statistics.median(result["inside_monitor"])
    inside_fraction = inside / rows[2]["median_s"]
    small = (f"micro-batch of {result['micro_batch_size']}" if args.processes == 1
             else f"per-process batch of {result['per_process_batch']}")
    print(f"noise-scale monitor overhead: {args.model}, batch {args.batch_size}, {args.processes} process(es), "
          f"{result['accumulation_steps']} micro-batch(es) per process, small batch = {small}, measured every "
          f"{args.every} step(s); {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s) per process, {args.rounds} rounds (rank 0's times)")
    print(f"{'clock':<6} {'variant':<10} {'median ms':>10} {'min..max ms':>19}")
    for row in rows:
        print(f"{row['clock']:<6} {row['variant']:<10} {row['median_s'] * 1e3:>10.1f} "
              f"{row['min_s'] * 1e3:>9.1f}..{row['max_s'] * 1e3:<9.1f}")
    fastest_ratio = rows[1]["min_s"] / rows[0]["min_s"]  # the least disturbed steps of each
    print(f"monitored / baseline: wall {wall_ratio:.4f} (median of per-round ratios {paired:.4f}; fastest steps "
          f"{fastest_ratio:.4f}), CPU {cpu_ratio:.4f}")
    print(f"inside the monitor's calls: {inside * 1e3:.2f} ms CPU per step = {100 * inside_fraction:.2f}% of the "
          f"baseline step's CPU time")
    print(f"noise scale after {args.warmup + args.rounds} steps (random labels, so not meaningful): "
          f"{format_noise_scale(result['noise'])}")
    report = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "load_average": os.getloadavg(), "torch": torch.__version__, "model": args.model,
              "batch_size": args.batch_size, "processes": args.processes,
              "micro_batch_size": result["micro_batch_size"], "accumulation_steps": result["accumulation_steps"],
              "every": args.every, "threads": args.threads, "rounds": args.rounds, "rows": rows,
              "wall_ratio_of_medians": wall_ratio, "wall_median_paired_ratio": paired,
              "wall_ratio_of_fastest": fastest_ratio, "cpu_ratio_of_medians": cpu_ratio,
              "inside_monitor_median_cpu_s": inside, "inside_monitor_cpu_fraction": inside_fraction,
              "times": result["times"], "cpu": result["cpu"]}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
