"""Published large-batch ImageNet records, and the planner's prediction for each from the presets
alone (no per-record fitting). ``largebatch plan --validate`` prints the table that
docs/planner.md quotes.

Each record's options are only what its paper states (processors, batch, epochs, node layout,
network, gradient precision, overlap) or, where it is silent, an assumption written in
``stated``; everything else is the device's preset. A record is a *calibration* when a preset
value it is predicted with was taken from that same paper (then agreement is not evidence), a
*validation* otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from largebatch.plan.estimate import Plan, Setup, model_cost, plan_time
from largebatch.plan.presets import get_device, get_network

TARGET_RATIO = 1.5  # a validation record should be predicted within this factor of its published time

# ABCI compute node (AIST, ABCI system overview): 4 Tesla V100 SXM2 16GB, 2 Xeon Gold 6148 (2 x 20
# cores), 2 InfiniBand EDR adapters. Mikami et al. and Yamazaki et al. both ran on ABCI.
ABCI_NODE = {"devices_per_node": 4, "links_per_node": 2, "cores_per_node": 40}


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
    calibration: str = ""  # non-empty: which preset value came from this paper
    published_images_per_second: float | None = None  # throughput over all processors, where stated


RECORDS = [
    Record("You et al. 2018, AlexNet-BN", "2048 Xeon Platinum 8160", "alexnet_bn", "skylake-8160",
           "omnipath-100g", 2048, 32768, 100, 11 * 60,
           stated="ICPP 2018 abstract: 2,048 Xeon Platinum 8160, 100 epochs in 11 min. Network not taken "
                  "from the paper: assumed TACC Stampede2's 100 Gb/s Omni-Path, 2 sockets per node. Decoding "
                  "on the training cores (Intel Caffe's data layer)."),
    Record("You et al. 2018, ResNet-50 (90 ep)", "2048 Xeon Phi 7250", "resnet50", "knl",
           "omnipath-100g", 2048, 32768, 90, 20 * 60,
           stated="ICPP 2018 abstract: 2,048 Xeon Phi 7250, 90 epochs in 20 min. Network assumed: "
                  "Stampede2's 100 Gb/s Omni-Path, one KNL per node. Decoding on the training cores."),
    Record("You et al. 2018, ResNet-50 (64 ep)", "2048 Xeon Phi 7250", "resnet50", "knl",
           "omnipath-100g", 2048, 32768, 64, 14 * 60,
           stated="arXiv 1709.05011 abstract: 64 epochs in 14 min, 74.9% top-1; same system as above."),
    Record("Goyal et al. 2017, ResNet-50", "256 P100 (32 servers, 50 GbE)", "resnet50", "p100",
           "ethernet-50g", 256, 8192, 90, 60 * 60,
           options={"overlap": True, "links_per_node": 1},
           stated="arXiv 1706.02677: 256 P100, 8K, 1 hour. As we read the paper: Big Basin servers of 8 "
                  "NVLink P100, one 50 Gb/s Ethernet link each; gradient aggregation runs in parallel "
                  "with backprop (--overlap).",
           calibration="the P100 rate (138 img/s) is this paper's own 29-hour single-server baseline"),
    Record("Akiba et al. 2017, ResNet-50", "1024 P100 (InfiniBand FDR)", "resnet50", "p100",
           "ib-fdr", 1024, 32768, 90, 15 * 60,
           options={"gradient_bytes": 2, "links_per_node": 1},
           stated="arXiv 1711.04325 abstract: 1,024 P100, 32K, 90 epochs in 15 min. As we read the paper: "
                  "InfiniBand FDR, half-precision all-reduce. Assumed: 128 nodes of 8, one FDR link per "
                  "node, no overlap."),
    Record("Jia et al. 2018, ResNet-50", "2048 P40 (Tencent)", "resnet50", "p40",
           "ethernet-100g", 2048, 65536, 90, 6.6 * 60,
           options={"gradient_bytes": 2},
           stated="arXiv 1807.11205 abstract: 2,048 Tesla P40, 6.6 min, 75.8% top-1, mini-batches up to 64K, "
                  "ResNet-50 'with 90 epochs'. Batch 64K (32 per GPU), TensorFlow and 100 Gbit Ethernet as "
                  "Mikami et al.'s table quotes it (NVIDIA's news post on Sony's record). As we read the "
                  "paper: 8 P40 per server, half-precision gradients. Assumed: one 100 GbE link and 40 cores "
                  "per server, no overlap."),
    Record("Jia et al. 2018, AlexNet", "1024 P40 (Tencent)", "alexnet_bn", "p40",
           "ethernet-100g", 1024, 65536, 95, 4 * 60,
           options={"gradient_bytes": 2},
           stated="arXiv 1807.11205 abstract and GTC 2019 talk S9146: AlexNet, 95 epochs in 4 min on 1,024 "
                  "Tesla P40, 58.7% top-1. As we read the paper: batch 64K (64 per GPU), AlexNet with "
                  "batch normalization (alexnet_bn's costs), half-precision gradients. Assumed as above."),
    Record("Mikami et al. 2018 (v1), ResNet-50", "2176 V100 (ABCI)", "resnet50", "v100",
           "ib-edr", 2176, 69632, 90, 224,
           options={**ABCI_NODE, "gradient_bytes": 2},
           stated="arXiv 1811.05233 v1 abstract: ImageNet/ResNet-50 in 224 s on ABCI. Its table (as NVIDIA's "
                  "news post on the record quotes it): 2,176 V100, batch 34K->68K (batch-size control: a "
                  "smaller batch in the first epochs; modelled here at 68K, 32 per GPU), NNL, 75.03%, "
                  "InfiniBand EDR x2 per node. As we read the paper: 90 epochs, 2D-torus all-reduce in half "
                  "precision. ABCI node: 4 V100, 40 cores. Assumed: no overlap."),
    Record("Mikami et al. 2018 (v2), ResNet-50", "3456 V100 (ABCI)", "resnet50", "v100",
           "ib-edr", 3456, 55296, 90, 122,
           options={**ABCI_NODE, "gradient_bytes": 2},
           stated="arXiv 1811.05233 v2 abstract: ResNet-50 in 122 s on ABCI. As we read the paper: 3,456 V100, "
                  "batch 54K (16 per GPU), 90 epochs, 75.29%. Assumed as for v1."),
    Record("Ying et al. 2018, ResNet-50", "1024 TPU v3 chips (pod)", "resnet50", "tpu-v3",
           "tpu-ici", 1024, 32768, 90, 2.2 * 60,
           options={"gradient_bytes": 2},
           stated="arXiv 1811.06992 abstract: 76.3% in 2.2 min on a 1,024-chip TPU v3 pod, over 1.05 million "
                  "images/s. As we read the paper: batch 32K (32 per chip, 16 per core), 2-D torus "
                  "all-reduce. Assumed: 90 epochs (1.05M img/s x 2.2 min is 108 epochs of images: the time "
                  "includes more than 90 epochs of steady training), bf16 gradients, no overlap.",
           published_images_per_second=1.05e6),
    Record("Yamazaki et al. 2019, ResNet-50", "2048 V100 (ABCI)", "resnet50", "v100",
           "ib-edr", 2048, 81920, 90, 74.7,
           options={**ABCI_NODE, "gradient_bytes": 2},
           stated="arXiv 1903.12650 abstract: 74.7 s on 2,048 GPUs of ABCI, over 1.73 million images/s, 75.08%; "
                  "batch 81,920 (40 per GPU) and MXNet per NVIDIA's post on the record. Assumed: 90 epochs "
                  "(1.73M img/s x 74.7 s is 101 epochs of images), half-precision gradients, no overlap.",
           published_images_per_second=1.73e6),
]


def predict(record: Record, **overrides) -> Plan:
    """The plan of one record from the presets and its stated options; ``overrides`` replace Setup
    fields (e.g. ``half_batch=0`` for a constant rate) to see what a term contributes."""
    options = {**record.options, **overrides}
    setup = Setup(model=model_cost(record.model), device=get_device(record.device),
                  network=get_network(record.network), epochs=record.epochs, **options)
    return plan_time(setup, record.batch_size, record.processors)


def validation_rows(**overrides) -> list[dict]:
    """One row per record: published and predicted seconds, their ratio, the predicted and
    published throughput where the paper states one, and what bounds the prediction."""
    rows = []
    for record in RECORDS:
        plan = predict(record, **overrides)
        throughput = record.processors * plan.per_processor_batch / plan.iter_s
        ratio = plan.total_s / record.published_s
        rows.append({"run": record.run, "hardware": record.hardware, "batch_size": record.batch_size,
                     "per_processor_batch": plan.per_processor_batch, "epochs": record.epochs,
                     "published_s": record.published_s, "predicted_s": plan.total_s, "ratio": ratio,
                     "kind": "calibration" if record.calibration else "validation",
                     "calibration": record.calibration,
                     "within_target": 1 / TARGET_RATIO <= ratio <= TARGET_RATIO,
                     "predicted_images_per_second": throughput,
                     "published_images_per_second": record.published_images_per_second,
                     "bound": plan.bound, "efficiency": plan.efficiency, "stated": record.stated,
                     "plan": plan.to_dict()})
    return rows
