"""Published large-batch ImageNet records, and the planner's prediction for each from the presets
alone (no per-record fitting). ``largebatch plan --validate`` prints the table that
docs/planner.md quotes.

Each record's options are only what its paper states (processors, batch, epochs, network,
gradient precision, overlap); everything else is the device's preset. ``stated`` says which
facts come from the abstract and which from our reading of the paper or are assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from largebatch.plan.estimate import Plan, Setup, model_cost, plan_time
from largebatch.plan.presets import get_device, get_network


@dataclass(frozen=True)
class Record:
    run: str
    hardware: str
    model: str
    device: str
    network: str
    processors: int
    batch_size: int
    epochs: float
    published_s: float
    options: dict = field(default_factory=dict)
    stated: str = ""   # what the paper states about its system, and what we assumed


RECORDS = [
    Record("You et al. 2018, AlexNet-BN", "2048 Xeon Platinum 8160", "alexnet_bn", "skylake-8160",
           "omnipath-100g", 2048, 32768, 100, 11 * 60,
           stated="ICPP 2018 abstract: 2,048 Xeon Platinum 8160, 100 epochs in 11 min. Network not taken "
                  "from the paper: assumed TACC Stampede2's 100 Gb/s Omni-Path, 2 sockets per node."),
    Record("You et al. 2018, ResNet-50 (90 ep)", "2048 Xeon Phi 7250", "resnet50", "knl",
           "omnipath-100g", 2048, 32768, 90, 20 * 60,
           stated="ICPP 2018 abstract: 2,048 Xeon Phi 7250, 90 epochs in 20 min. Network assumed: "
                  "Stampede2's 100 Gb/s Omni-Path, one KNL per node."),
    Record("You et al. 2018, ResNet-50 (64 ep)", "2048 Xeon Phi 7250", "resnet50", "knl",
           "omnipath-100g", 2048, 32768, 64, 14 * 60,
           stated="arXiv 1709.05011 abstract: 64 epochs in 14 min, 74.9% top-1; same system as above."),
    Record("Goyal et al. 2017, ResNet-50", "256 P100 (32 servers, 50 GbE)", "resnet50", "p100",
           "ethernet-50g", 256, 8192, 90, 60 * 60,
           options={"overlap": True, "links_per_node": 1},
           stated="arXiv 1706.02677: 256 P100, 8K, 1 hour. As we read the paper: Big Basin servers of 8 "
                  "NVLink P100, one 50 Gb/s Ethernet link each; gradient aggregation runs in parallel "
                  "with backprop (--overlap)."),
    Record("Akiba et al. 2017, ResNet-50", "1024 P100 (InfiniBand FDR)", "resnet50", "p100",
           "ib-fdr", 1024, 32768, 90, 15 * 60,
           options={"gradient_bytes": 2, "links_per_node": 1},
           stated="arXiv 1711.04325 abstract: 1,024 P100, 32K, 90 epochs in 15 min. As we read the paper: "
                  "InfiniBand FDR, half-precision all-reduce. Assumed: 128 nodes of 8, one FDR link per "
                  "node, no overlap."),
]


def predict(record: Record) -> Plan:
    setup = Setup(model=model_cost(record.model), device=get_device(record.device),
                  network=get_network(record.network), epochs=record.epochs, **record.options)
    return plan_time(setup, record.batch_size, record.processors)


def validation_rows() -> list[dict]:
    """One row per record: published and predicted seconds, their ratio, and what bounds it."""
    rows = []
    for record in RECORDS:
        plan = predict(record)
        rows.append({"run": record.run, "hardware": record.hardware, "batch_size": record.batch_size,
                     "epochs": record.epochs, "published_s": record.published_s,
                     "predicted_s": plan.total_s, "ratio": plan.total_s / record.published_s,
                     "bound": plan.bound, "efficiency": plan.efficiency, "stated": record.stated,
                     "plan": plan.to_dict()})
    return rows
