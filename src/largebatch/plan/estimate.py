"""The time-to-train model: one pure function of (setup, global batch, processors).

Per iteration of synchronous data-parallel SGD with a global batch B on p processors:

    b        = B / p                                  images per processor
    compute  = b / R                                  R: training images/s of one processor
    comm     = all-reduce of the gradient, n = parameters x bytes per element (allreduce.py)
    iter     = compute + comm                         without overlap
    iter     = compute + max(0, comm - 2/3 compute)   with overlap: the all-reduce runs during
                                                      the backward pass (~2/3 of compute)
    epoch    = (images / B) x iter
    total    = epochs x epoch
    efficiency = compute / iter  = (time on 1 processor) / (p x time on p processors)
                                   at the same per-processor batch

R for a model comes from the device preset: its measured rate scaled by MACs, or one stated
efficiency factor x peak FLOP/s (presets.py). With p = 1 there is no communication, so the total
is images x epochs / R. Everything here is arithmetic on floats, with no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from largebatch.errors import ConfigError
from largebatch.plan import allreduce as ar
from largebatch.plan.presets import TRAINING_FLOPS_PER_MAC, Device, Network

IMAGENET_TRAIN_IMAGES = 1_281_167
BACKWARD_FRACTION = 2 / 3  # backward ~ 2x forward, so ~2/3 of the compute of an iteration
ALLREDUCE_CHOICES = ("best",) + ar.ALGORITHMS


@dataclass(frozen=True)
class ModelCost:
    name: str
    macs: float    # multiply-accumulates per image, forward
    params: int    # trainable parameters (one gradient element each)


def model_cost(name: str) -> ModelCost:
    """A model's MACs and parameters from the torch-free table ``largebatch.model_costs``."""
    from largebatch.model_costs import MODEL_COSTS
    if name not in MODEL_COSTS:
        raise ConfigError(f"--model: unknown model '{name}' (choose from {', '.join(sorted(MODEL_COSTS))})")
    entry = MODEL_COSTS[name]
    return ModelCost(name, float(entry["macs"]), int(entry["params"]))


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
    overlap: bool = False              # all-reduce overlapped with the backward pass
    gradient_bytes: int = 4            # bytes per gradient element on the wire (4 FP32, 2 FP16)
    links_per_node: int | None = None  # default: the device preset's
    devices_per_node: int | None = None
    images_per_second: float | None = None  # override the device's rate for this model
    efficiency: float | None = None         # override: achieved FLOP/s = efficiency x peak

    def rate(self) -> float:
        """Training images/s of one processor for this model."""
        if self.images_per_second:
            return self.images_per_second
        if self.efficiency:
            achieved = self.efficiency * self.device.peak_flops
        else:
            achieved = self.device.achieved_flops(macs_of)
        return achieved / (TRAINING_FLOPS_PER_MAC * self.model.macs)

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

    def links(self) -> ar.Links:
        links_per_node = self.links_per_node or self.device.links_per_node
        return ar.Links(network_bandwidth=self.network.bandwidth * links_per_node,
                        network_latency=self.network.latency,
                        intra_bandwidth=self.device.intra_bandwidth,
                        intra_latency=self.device.intra_latency,
                        devices_per_node=self.devices_per_node or self.device.devices_per_node)

    def gradient_megabytes(self) -> float:
        return self.model.params * self.gradient_bytes / 1e6


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
    images_per_second: float          # per processor, for this model
    gradient_bytes: float             # bytes all-reduced per iteration
    allreduce: str                    # algorithm used
    allreduce_s: dict[str, float]     # every algorithm's time per iteration
    overlap: bool
    compute_s_per_iter: float
    comm_s_per_iter: float            # the chosen all-reduce, whole
    exposed_comm_s_per_iter: float    # the part not hidden behind the backward pass
    iter_s: float
    epoch_s: float
    total_s: float
    efficiency: float
    bound: str                        # "compute", "bandwidth" or "latency"
    explanation: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def plan_time(setup: Setup, batch_size: int, processors: int) -> Plan:
    """Predict iteration, epoch and total time of training ``setup`` with a global batch of
    ``batch_size`` images on ``processors`` processors (see the module docstring)."""
    if processors < 1:
        raise ConfigError(f"--processors: expected an integer >= 1, got {processors}")
    if batch_size < processors:
        raise ConfigError(f"--batch-size: {batch_size} images cannot be split over {processors} processors "
                          "(need at least one image per processor)")
    if setup.allreduce not in ALLREDUCE_CHOICES:
        raise ConfigError(f"--allreduce: unknown algorithm '{setup.allreduce}' (choose from {', '.join(ALLREDUCE_CHOICES)})")
    rate = setup.rate()
    if not rate > 0:
        raise ConfigError(f"device '{setup.device.name}' has no training rate: give --images-per-second or --efficiency")
    per_processor = batch_size / processors
    compute = per_processor / rate
    links = setup.links()
    message = setup.model.params * setup.gradient_bytes
    times = ar.all_algorithms(message, processors, links)
    chosen = min(times.values(), key=lambda t: t.total_s) if setup.allreduce == "best" else times[setup.allreduce]
    comm = chosen.total_s
    hidden = BACKWARD_FRACTION * compute if setup.overlap else 0.0
    exposed = max(0.0, comm - hidden)
    iteration = compute + exposed
    iterations_per_epoch = setup.images / batch_size
    epoch = iterations_per_epoch * iteration
    total = setup.epochs * epoch
    efficiency = compute / iteration
    per_node = max(1, min(links.devices_per_node, processors))
    nodes = -(-processors // per_node)

    if processors == 1 or exposed <= compute:
        bound = "compute"
    elif chosen.bandwidth_s >= chosen.latency_s:
        bound = "bandwidth"
    else:
        bound = "latency"
    megabytes = message / 1e6
    if processors == 1:
        explanation = (f"compute-bound: one processor, no communication; {per_processor:g} images "
                       f"per iteration at {rate:,.0f} images/s")
    elif bound == "compute":
        hidden_text = " after overlap with the backward pass" if setup.overlap else ""
        explanation = (f"compute-bound: each processor computes {per_processor:g} images in {duration(compute)}; "
                       f"the {chosen.algorithm} all-reduce of {megabytes:.1f} MB adds {duration(exposed)}"
                       f"{hidden_text}, so {efficiency:.0%} of the time is computing")
    elif bound == "bandwidth":
        explanation = (f"communication-bound (bandwidth): the {chosen.algorithm} all-reduce of {megabytes:.1f} MB "
                       f"takes {duration(comm)} ({duration(chosen.bandwidth_s)} moving bytes) against "
                       f"{duration(compute)} of compute for {per_processor:g} images per processor; a larger "
                       f"per-processor batch, 16-bit gradients{'' if setup.overlap else ', --overlap'} "
                       f"or a faster network would help")
    else:
        explanation = (f"communication-bound (latency): the {chosen.algorithm} all-reduce spends "
                       f"{duration(chosen.latency_s)} in message latency over {processors:,} processors "
                       f"against {duration(compute)} of compute; a hierarchical or tree all-reduce, "
                       f"or fewer, busier processors would help")

    notes = []
    reference_batch = setup.device.reference_batch
    if reference_batch and not setup.images_per_second and per_processor < reference_batch / 4:
        notes.append(f"{per_processor:g} images per processor is far below the {reference_batch} the device's "
                     f"rate was measured at; small per-processor batches usually run slower, so this "
                     f"prediction is optimistic")
    if batch_size % processors:
        notes.append(f"the batch of {batch_size} does not divide evenly over {processors} processors; "
                     f"the model uses the average, {per_processor:.2f} images each")

    return Plan(
        model=setup.model.name, device=setup.device.name, network=setup.network.name,
        processors=processors, nodes=nodes, batch_size=batch_size, per_processor_batch=per_processor,
        epochs=setup.epochs, images=setup.images, iterations=setup.epochs * iterations_per_epoch,
        images_per_second=rate, gradient_bytes=message, allreduce=chosen.algorithm,
        allreduce_s={name: t.total_s for name, t in times.items()}, overlap=setup.overlap,
        compute_s_per_iter=compute, comm_s_per_iter=comm, exposed_comm_s_per_iter=exposed,
        iter_s=iteration, epoch_s=epoch, total_s=total, efficiency=efficiency,
        bound=bound, explanation=explanation, notes=notes)
