"""The time-to-train model: one pure function of (setup, global batch, processors).

Per iteration of synchronous data-parallel SGD with a global batch B on p processors, g per node:

    b        = B / p                                  images per processor
    compute  = b / R(b)                               R(b): training images/s of one processor at
                                                      batch b (a per-batch curve, curve.py)
    comm     = all-reduce of the gradient, n = parameters x bytes per element (allreduce.py)
    exposed  = comm                                   without overlap
             = the bucketed all-reduce left after     with overlap, as DistributedDataParallel
               the backward pass (overlap.py)         does it; backward = 2/3 of compute
    decode   = b / R_in                               R_in: images/s the input pipeline gives one
                                                      processor (input_pipeline.py)
    iter     = max(compute + exposed, decode)         decoding on other cores (or on the GPU:
                                                      decode = 0)
             = compute + decode + exposed             decoding on the cores that train (CPUs)
    epoch    = (images / B) x iter
    total    = epochs x epoch
    efficiency = compute / iter

R(b) = R(b_ref) x shape(b) / shape(b_ref): the level R(b_ref) from the device preset (its
measured rate scaled by MACs, or one stated efficiency factor x peak FLOP/s, presets.py), the
shape from a per-batch table or the saturating form. With p = 1 there is no communication, so
the total is images x epochs / R(b) (when the input pipeline keeps up). Everything here is
arithmetic on floats, with no torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from largebatch.errors import ConfigError
from largebatch.plan import allreduce as ar
from largebatch.plan import input_pipeline
from largebatch.plan.curve import relative_rate
from largebatch.plan.overlap import DDP_BUCKET_BYTES, exposed_seconds
from largebatch.plan.presets import TRAINING_FLOPS_PER_MAC, Device, Network

IMAGENET_TRAIN_IMAGES = 1_281_167
BACKWARD_FRACTION = 2 / 3  # backward ~ 2x forward, so ~2/3 of the compute of an iteration
ALLREDUCE_CHOICES = ("best",) + ar.ALGORITHMS


@dataclass(frozen=True)
class ModelCost:
    name: str
    macs: float    # multiply-accumulates per image, forward
    params: int    # trainable parameters (one gradient element each)
    input_size: int = 224  # pixels per side of one input image


def model_cost(name: str) -> ModelCost:
    """A model's MACs and parameters from the torch-free table ``largebatch.model_costs``."""
    from largebatch.model_costs import MODEL_COSTS
    if name not in MODEL_COSTS:
        raise ConfigError(f"--model: unknown model '{name}' (choose from {', '.join(sorted(MODEL_COSTS))})")
    entry = MODEL_COSTS[name]
    return ModelCost(name, float(entry["macs"]), int(entry["params"]), int(entry["input_size"]))


def macs_of(name: str | None) -> float:
    if name is None:
        raise ConfigError("device preset has a reference rate but no reference_model")
    return model_cost(name).macs


@dataclass(frozen=True)
class Setup:
    """Everything but the batch size and the processor count."""

    model: ModelCost
    device: Device
    network: Network
    epochs: float = 90
    images: int = IMAGENET_TRAIN_IMAGES
    allreduce: str = "best"            # "best" picks the fastest of ring, tree, hierarchical
    overlap: bool = False              # all-reduce overlapped with the backward pass, in buckets
    bucket_bytes: float = DDP_BUCKET_BYTES  # gradient bucket for the overlap (DDP's 25 MiB)
    gradient_bytes: int = 4            # bytes per gradient element on the wire (4 FP32, 2 FP16)
    links_per_node: int | None = None  # default: the device preset's
    devices_per_node: int | None = None
    images_per_second: float | None = None  # override the device's rate for this model (any batch)
    efficiency: float | None = None         # override: achieved FLOP/s = efficiency x peak
    half_batch: float | None = None         # override the curve: R_max b / (b + b_half); 0: constant
    decoder: str | None = None              # override where decoding runs (input_pipeline.DECODERS)
    cores_per_node: int | None = None       # override the node's CPU cores for the input pipeline
    decode_images_per_second: float | None = None  # override images/s one core decodes and augments

    def reference_rate(self) -> float:
        """Training images/s of one processor for this model at the device's reference batch."""
        if self.images_per_second:
            return self.images_per_second
        if self.efficiency:
            achieved = self.efficiency * self.device.peak_flops
        else:
            achieved = self.device.achieved_flops(macs_of)
        return achieved / (TRAINING_FLOPS_PER_MAC * self.model.macs)

    def curve_factor(self, per_processor_batch: float) -> float:
        """R(b) / R(b_ref): how much faster or slower than at the reference batch."""
        device = self.device
        if self.images_per_second or not device.reference_batch:
            return 1.0
        if self.half_batch is not None:
            return relative_rate(per_processor_batch, device.reference_batch, half_batch=self.half_batch)
        return relative_rate(per_processor_batch, device.reference_batch, device.curve_batches,
                             device.curve_images_per_second, device.half_batch)

    def rate(self, per_processor_batch: float | None = None) -> float:
        """Training images/s of one processor for this model at ``per_processor_batch`` images
        per iteration (default: the device's reference batch)."""
        if per_processor_batch is None:
            return self.reference_rate()
        return self.reference_rate() * self.curve_factor(per_processor_batch)

    def rate_source(self) -> str:
        if self.images_per_second:
            return "--images-per-second"
        if self.efficiency:
            return f"--efficiency {self.efficiency:g} x peak"
        device = self.device
        if device.reference_images_per_second:
            if device.reference_model == self.model.name:
                return f"measured: {device.source}"
            return (f"{device.reference_model} measured at {device.reference_images_per_second:,.0f} img/s, "
                    f"scaled by MACs ({device.source})")
        return f"assumed {device.efficiency:.0%} of peak ({device.source})"

    def curve_source(self) -> str:
        """Where the shape R(b) / R(b_ref) comes from."""
        if self.images_per_second:
            return "constant (--images-per-second)"
        if not self.device.reference_batch:
            return "constant (the device has no reference batch)"
        if self.half_batch is not None:
            return f"saturating form, b_half = {self.half_batch:g} (--half-batch)" if self.half_batch else \
                "constant (--half-batch 0)"
        if self.device.curve_batches or self.device.half_batch:
            return self.device.curve_source
        return self.device.curve_source or "constant (no curve in the preset)"

    def links(self) -> ar.Links:
        links_per_node = self.links_per_node or self.device.links_per_node
        return ar.Links(network_bandwidth=self.network.bandwidth * links_per_node,
                        network_latency=self.network.latency,
                        intra_bandwidth=self.device.intra_bandwidth,
                        intra_latency=self.device.intra_latency,
                        devices_per_node=self.devices_per_node or self.device.devices_per_node)

    def gradient_megabytes(self) -> float:
        return self.model.params * self.gradient_bytes / 1e6

    def input_decoder(self) -> str:
        """Where decoding runs: the override, else none for small in-memory inputs, else the device's."""
        if self.decoder:
            return self.decoder
        if self.model.input_size <= input_pipeline.IN_MEMORY_MAX_INPUT_SIZE:
            return "none"
        return self.device.decoder

    def input_cores(self) -> int | None:
        return self.cores_per_node or self.device.cores_per_node

    def input_decode_rate(self) -> float | None:
        return self.decode_images_per_second or self.device.decode_images_per_second

    def input_rate(self, processors: int) -> float:
        """Training images/s the input pipeline gives each of ``processors`` (inf: no limit)."""
        per_node = max(1, min(self.links().devices_per_node, processors))
        return input_pipeline.images_per_second(self.input_decoder(), self.input_cores(), per_node,
                                                self.input_decode_rate())


@dataclass(frozen=True)
class Plan:
    """The predicted time of one configuration, and why."""

    model: str
    device: str
    network: str
    processors: int
    nodes: int
    batch_size: int
    per_processor_batch: float
    epochs: float
    images: int
    iterations: float                 # epochs x images / batch
    images_per_second: float          # per processor, for this model, at this per-processor batch
    reference_images_per_second: float  # per processor at the device's reference batch
    reference_batch: float | None     # the batch the device's rate was measured at
    curve_source: str                 # where R(b) / R(b_ref) comes from
    gradient_bytes: float             # bytes all-reduced per iteration
    allreduce: str                    # algorithm used
    allreduce_s: dict[str, float]     # every algorithm's time per iteration
    overlap: bool
    compute_s_per_iter: float
    comm_s_per_iter: float            # the chosen all-reduce, whole
    exposed_comm_s_per_iter: float    # the part not hidden behind the backward pass
    decoder: str                      # where the input pipeline runs
    input_images_per_second: float    # per processor, from the input pipeline (inf: no limit)
    input_s_per_iter: float           # decoding this processor's images of one iteration
    iter_s: float
    epoch_s: float
    total_s: float
    efficiency: float
    bound: str                        # "compute", "input", "bandwidth" or "latency"
    explanation: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        document = dataclasses.asdict(self)
        if math.isinf(document["input_images_per_second"]):
            document["input_images_per_second"] = None  # JSON has no infinity
        return document


def duration(seconds: float) -> str:
    """A duration in the unit a person would use (us, ms, s, min, h)."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _check_inputs(setup: Setup, batch_size: int, processors: int) -> None:
    """One-line errors for a plan that cannot be computed."""
    if processors < 1:
        raise ConfigError(f"--processors: expected an integer >= 1, got {processors}")
    if batch_size < processors:
        raise ConfigError(f"--batch-size: {batch_size} images cannot be split over {processors} processors "
                          "(need at least one image per processor)")
    if setup.allreduce not in ALLREDUCE_CHOICES:
        raise ConfigError(f"--allreduce: unknown algorithm '{setup.allreduce}' (choose from {', '.join(ALLREDUCE_CHOICES)})")
    if not setup.bucket_bytes > 0:
        raise ConfigError(f"--bucket-mb: expected a number > 0, got {setup.bucket_bytes / 2 ** 20:g}")


def _allreduce(setup: Setup, processors: int, compute: float, links: ar.Links,
               message: float) -> tuple[dict, ar.AllReduceTime, float]:
    """(every algorithm's time, the chosen one's, the seconds of it not hidden behind the backward
    pass) for one iteration's gradient all-reduce of ``message`` bytes."""
    times = ar.all_algorithms(message, processors, links)
    chosen = min(times.values(), key=lambda t: t.total_s) if setup.allreduce == "best" else times[setup.allreduce]
    if not (setup.overlap and processors > 1):
        return times, chosen, chosen.total_s

    def bucket_seconds(size: float) -> float:  # each bucket's all-reduce, by the same choice rule
        bucket_times = ar.all_algorithms(size, processors, links)
        if setup.allreduce == "best":
            return min(t.total_s for t in bucket_times.values())
        return bucket_times[setup.allreduce].total_s
    return times, chosen, exposed_seconds(message, setup.bucket_bytes, BACKWARD_FRACTION * compute, bucket_seconds)


def _explain(setup: Setup, bound: str, processors: int, per_processor: float, per_node: int, rate: float,
             compute: float, exposed: float, decode: float, decoder: str, chosen: ar.AllReduceTime,
             efficiency: float) -> str:
    """One sentence: what bounds the iteration and what would help."""
    megabytes = setup.gradient_megabytes()
    decode_text = ""
    if decode and decoder == "same-cores":
        decode_text = f"; decoding its images on the same cores adds {duration(decode)}"
    elif decode:
        decode_text = f"; the input pipeline needs {duration(decode)} on other cores, in parallel"
    if bound == "input":
        cores = setup.input_cores()
        where = "on the cores that also train" if decoder == "same-cores" else f"on the node's {cores} cores"
        return (f"input-bound: decoding and augmenting {per_processor:g} images takes {duration(decode)} "
                f"{where} ({setup.input_decode_rate():,.0f} images/s per core, {per_node} processor"
                f"{'s' if per_node > 1 else ''} per node) against {duration(compute)} of compute; more "
                f"cores per processor, a GPU decoder, smaller stored images or a faster decoder would help")
    if processors == 1:
        return (f"compute-bound: one processor, no communication; {per_processor:g} images "
                f"per iteration at {rate:,.0f} images/s{decode_text}")
    if bound == "compute":
        hidden_text = " after overlap with the backward pass" if setup.overlap else ""
        return (f"compute-bound: each processor computes {per_processor:g} images in {duration(compute)}; "
                f"the {chosen.algorithm} all-reduce of {megabytes:.1f} MB adds {duration(exposed)}"
                f"{hidden_text}{decode_text}, so {efficiency:.0%} of the time is computing")
    if bound == "bandwidth":
        return (f"communication-bound (bandwidth): the {chosen.algorithm} all-reduce of {megabytes:.1f} MB "
                f"takes {duration(chosen.total_s)} ({duration(chosen.bandwidth_s)} moving bytes) against "
                f"{duration(compute)} of compute for {per_processor:g} images per processor; a larger "
                f"per-processor batch, 16-bit gradients{'' if setup.overlap else ', --overlap'} "
                f"or a faster network would help")
    return (f"communication-bound (latency): the {chosen.algorithm} all-reduce spends "
            f"{duration(chosen.latency_s)} in message latency over {processors:,} processors "
            f"against {duration(compute)} of compute; a hierarchical or tree all-reduce, "
            f"or fewer, busier processors would help")


def _notes(setup: Setup, batch_size: int, processors: int, per_processor: float) -> list[str]:
    """Caveats on the prediction: rates read outside what the device file measured, uneven splits."""
    notes = []
    device = setup.device
    reference_batch = device.reference_batch
    has_curve = (setup.half_batch if setup.half_batch is not None else
                 (device.curve_batches or device.half_batch))
    if (reference_batch and not setup.images_per_second and not has_curve
            and per_processor < reference_batch / 4):
        notes.append(f"{per_processor:g} images per processor is far below the {reference_batch:g} the device's "
                     f"rate was measured at, and the device has no rate curve; small per-processor batches "
                     f"usually run slower, so this prediction is optimistic")
    if (device.curve_batches and setup.half_batch is None and not setup.images_per_second
            and not device.curve_batches[0] <= per_processor <= device.curve_batches[-1]):
        notes.append(f"{per_processor:g} images per processor is outside the device's per-batch table "
                     f"({device.curve_batches[0]:g} to {device.curve_batches[-1]:g}); the rate there follows "
                     f"the saturating form fitted to the table")
    if batch_size % processors:
        notes.append(f"the batch of {batch_size} does not divide evenly over {processors} processors; "
                     f"the model uses the average, {per_processor:.2f} images each")
    return notes


def plan_time(setup: Setup, batch_size: int, processors: int) -> Plan:
    """Predict iteration, epoch and total time of training ``setup`` with a global batch of
    ``batch_size`` images on ``processors`` processors (see the module docstring)."""
    _check_inputs(setup, batch_size, processors)
    reference_rate = setup.reference_rate()
    if not reference_rate > 0:
        raise ConfigError(f"device '{setup.device.name}' has no training rate: give --images-per-second or --efficiency")
    per_processor = batch_size / processors
    rate = setup.rate(per_processor)
    compute = per_processor / rate
    links = setup.links()
    message = setup.model.params * setup.gradient_bytes
    times, chosen, exposed = _allreduce(setup, processors, compute, links, message)

    decoder = setup.input_decoder()
    input_rate = setup.input_rate(processors)
    decode = 0.0 if math.isinf(input_rate) else per_processor / input_rate
    if decoder == "same-cores":
        iteration = compute + decode + exposed
        input_bound = decode > max(compute, exposed)
    else:
        iteration = max(compute + exposed, decode)
        input_bound = decode > compute + exposed
    iterations_per_epoch = setup.images / batch_size
    epoch = iterations_per_epoch * iteration
    efficiency = compute / iteration
    per_node = max(1, min(links.devices_per_node, processors))

    if input_bound:
        bound = "input"
    elif processors == 1 or exposed <= compute:
        bound = "compute"
    elif chosen.bandwidth_s >= chosen.latency_s:
        bound = "bandwidth"
    else:
        bound = "latency"
    explanation = _explain(setup, bound, processors, per_processor, per_node, rate, compute, exposed, decode,
                           decoder, chosen, efficiency)

    return Plan(
        model=setup.model.name, device=setup.device.name, network=setup.network.name,
        processors=processors, nodes=-(-processors // per_node), batch_size=batch_size,
        per_processor_batch=per_processor, epochs=setup.epochs, images=setup.images,
        iterations=setup.epochs * iterations_per_epoch, images_per_second=rate,
        reference_images_per_second=reference_rate, reference_batch=setup.device.reference_batch,
        curve_source=setup.curve_source(), gradient_bytes=message,
        allreduce=chosen.algorithm, allreduce_s={name: t.total_s for name, t in times.items()},
        overlap=setup.overlap, compute_s_per_iter=compute, comm_s_per_iter=chosen.total_s,
        exposed_comm_s_per_iter=exposed, decoder=decoder, input_images_per_second=input_rate,
        input_s_per_iter=decode, iter_s=iteration, epoch_s=epoch, total_s=setup.epochs * epoch,
        efficiency=efficiency, bound=bound, explanation=explanation,
        notes=_notes(setup, batch_size, processors, per_processor))
