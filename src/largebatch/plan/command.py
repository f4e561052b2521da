"""``largebatch plan``: arguments, and the report it prints (text, table or JSON)."""

from __future__ import annotations

import argparse
import json
import re

from largebatch.errors import ConfigError
from largebatch.plan.estimate import (ALLREDUCE_CHOICES, IMAGENET_TRAIN_IMAGES, Plan, Setup, duration,
                                      model_cost, plan_time)
from largebatch.plan.input_pipeline import DECODERS
from largebatch.plan.overlap import MiB
from largebatch.plan.presets import DEVICES, NETWORKS, get_device, get_network, load_preset_file

GRADIENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="resnet50", metavar="NAME",
                        help="model whose MACs and parameters are used (default: resnet50)")
    parser.add_argument("--batch-size", type=int, default=32768, metavar="N",
                        help="GLOBAL batch size, summed over processors (default: 32768)")
    parser.add_argument("--processors", type=int, default=None, metavar="P",
                        help="number of processors (GPUs, CPU sockets, TPU chips); required unless swept")
    parser.add_argument("--epochs", type=float, default=90, metavar="E", help="epochs (default: 90)")
    parser.add_argument("--images", type=int, default=IMAGENET_TRAIN_IMAGES, metavar="N",
                        help=f"training images per epoch (default: {IMAGENET_TRAIN_IMAGES:,}, ImageNet-1k)")
    parser.add_argument("--device", default=None, metavar="NAME",
                        help=f"device preset: {', '.join(DEVICES)}")
    parser.add_argument("--device-file", default=None, metavar="PATH",
                        help="device preset written by 'largebatch benchmark' (instead of --device)")
    parser.add_argument("--network", default=None, metavar="NAME",
                        help=f"network preset (default: the device's): {', '.join(NETWORKS)}")
    parser.add_argument("--links-per-node", type=int, default=None, metavar="N",
                        help="network links (NICs) per node (default: the device's)")
    parser.add_argument("--devices-per-node", type=int, default=None, metavar="N",
                        help="processors per node (default: the device's)")
    parser.add_argument("--allreduce", default="best", choices=ALLREDUCE_CHOICES,
                        help="all-reduce algorithm; best: the fastest of the three (default: best)")
    parser.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=False,
                        help="overlap the all-reduce with the backward pass in gradient buckets, as "
                             "DistributedDataParallel does (default: off)")
    parser.add_argument("--bucket-mb", type=float, default=25.0, metavar="MIB",
                        help="gradient bucket size for --overlap, MiB (default: 25, DDP's bucket_cap_mb)")
    parser.add_argument("--gradient-precision", default="fp32", choices=tuple(GRADIENT_BYTES),
                        help="precision of the gradients on the wire (default: fp32)")
    parser.add_argument("--images-per-second", type=float, default=None, metavar="R",
                        help="override: training images/s of one processor for this model")
    parser.add_argument("--efficiency", type=float, default=None, metavar="X",
                        help="override: achieved FLOP/s as a fraction of the device's peak")
    parser.add_argument("--half-batch", type=float, default=None, metavar="B",
                        help="override the device's rate curve with R(b) = R_max b / (b + B), anchored at the "
                             "device's reference batch; 0: a constant rate")
    parser.add_argument("--decoder", default=None, choices=DECODERS,
                        help="where images are decoded: other-cores (loader processes beside the "
                             "processors), same-cores (the CPU that trains), gpu (not a separate term), none "
                             "(in-memory data) (default: the device's; none for inputs of 32 pixels or less)")
    parser.add_argument("--cores-per-node", type=int, default=None, metavar="N",
                        help="CPU cores per node for the input pipeline (default: the device's)")
    parser.add_argument("--decode-rate", type=float, default=None, metavar="R",
                        help="training images one core decodes and augments per second (default: the device's)")
    parser.add_argument("--sweep", default=None, metavar="KEY=V1,V2,...",
                        help="a table over processors=... or batch=... (the other held fixed); "
                             "A..B doubles from A to B, e.g. processors=64..4096")
    parser.add_argument("--json", action="store_true", help="print JSON (one object, or a list for --sweep)")
    group = parser.add_argument_group(
        "time to a target accuracy (McCandlish et al. 2018: S(B) = S_min (1 + B_noise / B) steps; "
        "docs/critical-batch.md)",
        "Any of these switches to a grid of batch sizes x processor counts (--sweep batch=... or "
        "processors=... narrows one axis; --processors P fixes it) and names the fastest configuration, "
        "the one with the fewest processor-hours and a balanced one; --batch-size and --epochs are then unused.")
    group.add_argument("--noise-scale", type=float, default=None, metavar="N",
                       help="gradient noise scale B_noise (e.g. the B_simple a run measured with --noise-scale)")
    group.add_argument("--min-steps", type=float, default=None, metavar="S",
                       help="S_min: steps to the target with an unlimited batch")
    group.add_argument("--from-run", default=None, metavar="DIR",
                       help="read B_noise from a run trained with --noise-scale; with --target-top1 also S_min, "
                            "from the steps that run needed")
    group.add_argument("--from-study", default=None, metavar="DIR",
                       help="read S_min (and B_noise = B_crit, unless given) from a study's fit; needs --target-top1")
    group.add_argument("--target-top1", type=float, default=None, metavar="X",
                       help="the target test top-1 (0..1) for --from-run and --from-study")
    group.add_argument("--variant", default="lars", metavar="NAME",
                       help="the study's optimizer variant for --from-study (default: lars)")
    group.add_argument("--min-per-processor", type=float, default=None, metavar="N",
                       help="smallest per-processor batch on the grid (default: a quarter of the batch the device's "
                            "rate was measured at, where the rate model is trusted; 1 without one)")
    parser.add_argument("--list", action="store_true", help="list the device and network presets and exit")
    parser.add_argument("--validate", action="store_true",
                        help="predict the published records of docs/planner.md and compare")


def parse_sweep(text: str) -> tuple[str, list[int]]:
    """'processors=64,128' or 'batch=1024..32768' -> ('processors', [64, 128])."""
    match = re.fullmatch(r"\s*(processors|batch)\s*=\s*(.+)", text)
    if not match:
        raise ConfigError(f"--sweep: expected processors=V1,V2,... or batch=V1,V2,..., got '{text}'")
    key, values_text = match.groups()
    values: list[int] = []
    try:
        for part in values_text.split(","):
            part = part.strip()
            if ".." in part:
                low, high = (int(x) for x in part.split(".."))
                if low < 1 or high < low:
                    raise ValueError
                value = low
                while value <= high:
                    values.append(value)
                    value *= 2
            elif part:
                values.append(int(part))
    except ValueError:
        raise ConfigError(f"--sweep: '{values_text}' is not a list of positive integers (or A..B)") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--sweep: '{values_text}' is not a list of positive integers (or A..B)")
    return key, values


def setup_from_args(args: argparse.Namespace) -> Setup:
    if args.device and args.device_file:
        raise ConfigError("give --device NAME or --device-file PATH, not both")
    if args.device_file:
        device, measured_network = load_preset_file(args.device_file)
    elif args.device:
        device, measured_network = get_device(args.device), None
    else:
        raise ConfigError(f"--device: give a device preset ({', '.join(DEVICES)}) or --device-file PATH")
    if args.network:
        network = get_network(args.network)
    elif measured_network is not None:
        network = measured_network
    else:
        network = get_network(device.network)
    for flag, value in (("--epochs", args.epochs), ("--images", args.images), ("--links-per-node", args.links_per_node),
                        ("--devices-per-node", args.devices_per_node), ("--images-per-second", args.images_per_second),
                        ("--efficiency", args.efficiency), ("--bucket-mb", args.bucket_mb),
                        ("--cores-per-node", args.cores_per_node), ("--decode-rate", args.decode_rate)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag}: expected a number > 0, got {value}")
    if args.half_batch is not None and not args.half_batch >= 0:
        raise ConfigError(f"--half-batch: expected a number >= 0, got {args.half_batch}")
    if args.half_batch is not None and not device.reference_batch:
        raise ConfigError(f"--half-batch: device '{device.name}' has no reference batch to anchor the curve at")
    return Setup(model=model_cost(args.model), device=device, network=network, epochs=args.epochs,
                 images=args.images, allreduce=args.allreduce, overlap=args.overlap,
                 bucket_bytes=args.bucket_mb * MiB,
                 gradient_bytes=GRADIENT_BYTES[args.gradient_precision], links_per_node=args.links_per_node,
                 devices_per_node=args.devices_per_node, images_per_second=args.images_per_second,
                 efficiency=args.efficiency, half_batch=args.half_batch, decoder=args.decoder,
                 cores_per_node=args.cores_per_node, decode_images_per_second=args.decode_rate)


def format_plan(plan: Plan, setup: Setup) -> str:
    """The human report of one configuration."""
    device, network = setup.device, setup.network
    links = setup.links()
    per_node = max(1, min(links.devices_per_node, plan.processors))
    b = plan.per_processor_batch
    if plan.reference_batch and not setup.images_per_second:
        curve = (f"R({b:g}) = {plan.images_per_second:,.1f} = {plan.images_per_second / plan.reference_images_per_second:.2f}"
                 f" x R({plan.reference_batch:g}); {plan.curve_source}")
    else:
        curve = plan.curve_source
    if plan.decoder == "gpu":
        input_text = "decoded on the accelerator: not a separate term (inside the measured rate)"
    elif plan.decoder == "none":
        input_text = ("none: the data set is held in memory (the default for inputs of 32 pixels or less; "
                      "--decoder to change)")
    elif plan.input_s_per_iter == 0:
        input_text = "not modelled (no cores or decode rate in the preset)"
    else:
        where = "the same cores that train" if plan.decoder == "same-cores" else "other cores, in parallel"
        input_text = (f"{setup.input_cores()} cores per node x {setup.input_decode_rate():,.0f} images/s, on {where}: "
                      f"{plan.input_images_per_second:,.0f} images/s per processor ({device.input_source})")
    lines = [
        f"plan: {plan.model}, batch {plan.batch_size:,} on {plan.processors:,} x {device.name} "
        f"({plan.nodes:,} node{'s' if plan.nodes > 1 else ''} of {per_node}), {network.name} "
        f"x{setup.links_per_node or device.links_per_node} per node",
        f"  model       {setup.model.macs / 1e9:.3g} GMACs/image, {setup.model.params / 1e6:.3g}M parameters: "
        f"{plan.gradient_bytes / 1e6:.3g} MB of gradients per all-reduce",
        f"  device      {plan.images_per_second:,.1f} images/s per processor at {b:g} per processor "
        f"({plan.reference_images_per_second:,.1f} at the reference batch: {setup.rate_source()})",
        f"  curve       {curve}",
        f"  input       {input_text}",
        f"  network     {network.bandwidth * 8 / 1e9:.3g} Gb/s per link, {network.latency * 1e6:.3g} us per step; "
        f"in-node {device.intra_bandwidth / 1e9:.3g} GB/s",
        f"  per iteration ({b:g} images per processor)",
        f"    {'compute':<24}{duration(plan.compute_s_per_iter):>9}",
    ]
    for name, seconds in plan.allreduce_s.items():
        marker = "  <- used" if name == plan.allreduce else ""
        lines.append(f"    {'all-reduce ' + name:<24}{duration(seconds):>9}{marker}")
    overlap_text = (f"on, {setup.bucket_bytes / 2 ** 20:g} MiB buckets, {duration(plan.exposed_comm_s_per_iter)} left exposed"
                    if plan.overlap else "off")
    if plan.input_s_per_iter:
        relation = "added" if plan.decoder == "same-cores" else "in parallel"
        lines.append(f"    {'input pipeline':<24}{duration(plan.input_s_per_iter):>9}  ({relation})")
    lines += [
        f"    {'overlap':<24}{overlap_text:>9}",
        f"    {'iteration':<24}{duration(plan.iter_s):>9}",
        f"  epoch       {plan.images / plan.batch_size:,.1f} iterations, {duration(plan.epoch_s)}",
        f"  total       {plan.epochs:g} epochs, {plan.iterations:,.0f} iterations: {duration(plan.total_s)}",
        f"  efficiency  {plan.efficiency:.0%} of {plan.processors:,} x one processor",
        f"  bound       {plan.explanation}",
    ]
    lines += [f"  note        {note}" for note in plan.notes]
    return "\n".join(lines)


def format_table(plans: list[Plan]) -> str:
    header = (f"{'processors':>10} {'batch':>7} {'per proc':>8} {'img/s/proc':>10} {'compute':>9} {'all-reduce':>10} "
              f"{'iteration':>10} {'epoch':>9} {'total':>9} {'effic.':>6}  bound")
    lines = [header]
    for plan in plans:
        lines.append(f"{plan.processors:>10,} {plan.batch_size:>7,} {plan.per_processor_batch:>8g} "
                     f"{plan.images_per_second:>10,.0f} "
                     f"{duration(plan.compute_s_per_iter):>9} {duration(plan.comm_s_per_iter):>10} "
                     f"{duration(plan.iter_s):>10} {duration(plan.epoch_s):>9} {duration(plan.total_s):>9} "
                     f"{plan.efficiency:>6.0%}  {plan.bound} ({plan.allreduce})")
    return "\n".join(lines)


def format_presets() -> str:
    lines = [f"{'device':<14} {'peak TFLOP/s':>12} {'precision':<12} {'memory':>7} {'per node':>8}  "
             f"{'network':<14} {'training rate':<32} {'curve':<22} input"]
    for device in DEVICES.values():
        if device.reference_images_per_second:
            rate = f"{device.reference_images_per_second:,.0f} img/s {device.reference_model}"
        else:
            rate = f"assumed {device.efficiency:.0%} of peak"
        if device.reference_batch:
            rate += f" at {device.reference_batch:g}"
        if device.curve_batches:
            curve = f"table, b = {device.curve_batches[0]:g}..{device.curve_batches[-1]:g}"
        elif device.half_batch:
            curve = f"b_half = {device.half_batch:.1f}"
        else:
            curve = "constant"
        decode = (f"{device.cores_per_node} cores x {device.decode_images_per_second:,.0f}/s, {device.decoder}"
                  if device.cores_per_node and device.decode_images_per_second else device.decoder)
        lines.append(f"{device.name:<14} {device.peak_flops / 1e12:>12.2f} {device.precision.split(' ')[0]:<12} "
                     f"{device.memory_bytes / 1e9:>5.0f}GB {device.devices_per_node:>8}  "
                     f"{device.network + ' x' + str(device.links_per_node):<14} {rate:<32} {curve:<22} {decode}")
    lines += ["", f"{'network':<14} {'Gb/s':>6} {'latency':>8}  description"]
    for network in NETWORKS.values():
        lines.append(f"{network.name:<14} {network.bandwidth * 8 / 1e9:>6.1f} {network.latency * 1e6:>6.1f}us  "
                     f"{network.description}")
    return "\n".join(lines)


def format_validation(rows: list[dict]) -> str:
    """The records table: predicted / published time (and throughput where published), the kind."""
    from largebatch.plan.records import TARGET_RATIO
    lines = [f"{'run':<36} {'hardware':<30} {'batch':>6} {'/proc':>5} {'epochs':>6} {'published':>10} "
             f"{'predicted':>10} {'ratio':>6}  {'kind':<11} bound"]
    for row in rows:
        flag = "" if row["kind"] == "calibration" or row["within_target"] else " *"
        lines.append(f"{row['run']:<36} {row['hardware']:<30} {row['batch_size']:>6,} "
                     f"{row['per_processor_batch']:>5g} {row['epochs']:>6g} "
                     f"{duration(row['published_s']):>10} {duration(row['predicted_s']):>10} "
                     f"{row['ratio']:>6.2f}{flag:<2}{row['kind']:<11} {row['bound']} ({row['efficiency']:.0%})")
    lines.append("")
    for row in rows:
        if row["published_images_per_second"]:
            ratio = row["predicted_images_per_second"] / row["published_images_per_second"]
            lines.append(f"throughput, {row['run']}: predicted {row['predicted_images_per_second'] / 1e6:.2f}M "
                         f"images/s, published {row['published_images_per_second'] / 1e6:.2f}M "
                         f"(predicted / published {ratio:.2f}"
                         f"{'' if 1 / TARGET_RATIO <= ratio <= TARGET_RATIO else f', outside {TARGET_RATIO:g}x'})")
    for row in rows:
        if row["calibration"]:
            lines.append(f"calibration, {row['run']}: {row['calibration']}")
    validation = [row for row in rows if row["kind"] == "validation"]
    outside = [row["run"] for row in validation if not row["within_target"]]
    lines.append(f"validation records within {TARGET_RATIO:g}x of the published time: "
                 f"{len(validation) - len(outside)} of {len(validation)}"
                 + (f"; outside (*): {'; '.join(outside)}" if outside else ""))
    lines.append("ratio = predicted / published time (above 1: predicted slower); "
                 "details and assumptions per record: --validate --json, docs/planner.md")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(format_presets())
        return 0
    if args.validate:
        from largebatch.plan.records import validation_rows
        rows = validation_rows()
        print(json.dumps(rows, indent=2) if args.json else format_validation(rows))
        return 0
    setup = setup_from_args(args)
    if any(value is not None for value in (args.noise_scale, args.min_steps, args.from_run, args.from_study)):
        return run_time_to_target(args, setup)
    if args.sweep:
        key, values = parse_sweep(args.sweep)
        if key == "batch" and args.processors is None:
            raise ConfigError("--sweep batch=...: give --processors P as well")
        pairs = [(args.batch_size, v) if key == "processors" else (v, args.processors) for v in values]
        plans = [plan_time(setup, batch, processors) for batch, processors in pairs if batch >= processors]
        skipped = [f"{batch} on {processors}" for batch, processors in pairs if batch < processors]
        if not plans:
            raise ConfigError(f"--sweep: every configuration has fewer images than processors ({', '.join(skipped)})")
        if args.json:
            print(json.dumps([p.to_dict() for p in plans], indent=2))
            return 0
        print(format_table(plans))
        if skipped:
            print(f"skipped (fewer images than processors): {', '.join(skipped)}")
        return 0
    if args.processors is None:
        raise ConfigError("--processors: give the number of processors (or --sweep processors=...)")
    plan = plan_time(setup, args.batch_size, args.processors)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan, setup))
    return 0


DEFAULT_BATCH_GRID = [2 ** k for k in range(5, 18)]       # 32 .. 131,072
DEFAULT_PROCESSOR_GRID = [2 ** k for k in range(0, 15)]   # 1 .. 16,384


def run_time_to_target(args: argparse.Namespace, setup: Setup) -> int:
    """The statistical planner: time to the target on a grid of batch sizes and processor counts."""
    from largebatch.plan import statistical
    model = statistical.steps_model_from_sources(args.noise_scale, args.min_steps, args.from_run, args.from_study,
                                                 args.target_top1, args.variant)
    batches, counts = DEFAULT_BATCH_GRID, DEFAULT_PROCESSOR_GRID
    if args.processors is not None:
        counts = [args.processors]
    if args.sweep:
        key, values = parse_sweep(args.sweep)
        if key == "batch":
            batches = values
        else:
            counts = values
    if args.min_per_processor is not None and not args.min_per_processor > 0:
        raise ConfigError(f"--min-per-processor: expected a number > 0, got {args.min_per_processor}")
    minimum = args.min_per_processor or statistical.default_min_per_processor(setup)
    grid = statistical.plan_grid(setup, model, batches, counts, minimum)
    if args.json:
        print(json.dumps(statistical.report_dict(setup, model, grid), indent=2))
    else:
        print(statistical.format_report(setup, model, grid))
    return 0
