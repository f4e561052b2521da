"""Device and network presets for the planner, each value with its public source.

A device preset is one processor (a GPU, a CPU socket, a Xeon Phi, a TPU chip) as it sits in
its usual node. Its training speed comes from one of two places, never both:

- a measured training rate: images/s per processor for a reference model at a reference
  per-processor batch (vendor benchmark, a paper's single-node baseline, or ``largebatch
  benchmark`` on your machine); other models are scaled by their MACs at the same achieved FLOP/s;
- otherwise one stated efficiency factor: achieved FLOP/s = efficiency x peak.

How the rate changes with the per-processor batch b (curve.py): a per-batch table where one is
published or measured (``curve_batches``, ``curve_images_per_second``; only its shape
R(b) / R(b_ref) is used), otherwise the saturating form R(b) = R_max b / (b + b_half) with
``half_batch`` = b_half stated, otherwise a constant rate.

The input pipeline (input_pipeline.py): CPU cores per node, training images one core decodes and
augments per second, and where decoding runs.

Achieved FLOP/s = rate x 6 x MACs per image (forward 2 FLOPs per MAC, backward twice the
forward). Numbers below are SI: bytes/s, FLOP/s, seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from largebatch.errors import ConfigError
from largebatch.plan.curve import check_table, fit_saturating
from largebatch.plan.input_pipeline import DECODERS

GB = 1e9
Gbit = 1e9 / 8  # bytes/s in one Gbit/s

RESNET50_MACS = 4_089_184_256  # conv + linear MACs at 224x224 (He et al. 2016, torchvision layout)
TRAINING_FLOPS_PER_MAC = 6     # 2 FLOPs per MAC, forward + backward (backward ~ 2x forward)


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    peak_flops: float                    # FLOP/s per processor in `precision`
    precision: str
    memory_bytes: float
    devices_per_node: int                # processors per node in its usual server
    intra_bandwidth: float               # bytes/s one processor sends to a neighbour in the node
    intra_latency: float                 # seconds per in-node message step
    network: str                         # default network preset
    links_per_node: int                  # network links (NICs) per node
    reference_model: str | None = None   # model whose training rate was measured
    reference_images_per_second: float | None = None  # per processor
    reference_macs: float | None = None  # MACs per image of reference_model (looked up if None)
    reference_batch: int | None = None   # per-processor batch the rate was measured at
    efficiency: float | None = None      # achieved / peak, only when no rate was measured
    source: str = ""
    # The rate against the per-processor batch: a table (its shape only) or the saturating form.
    curve_batches: tuple[float, ...] = ()           # per-processor batches of a per-batch table
    curve_images_per_second: tuple[float, ...] = ()  # images/s at each of them
    half_batch: float | None = None                  # b_half of R_max b / (b + b_half), without a table
    curve_source: str = ""
    # The input pipeline.
    cores_per_node: int | None = None                # CPU cores of one node (all its processors share them)
    decode_images_per_second: float | None = None    # per core: decode + random-resized crop + flip
    decoder: str = "other-cores"                     # where decoding runs (input_pipeline.DECODERS)
    input_source: str = ""

    def achieved_flops(self, macs_lookup) -> float:
        """Training FLOP/s one processor sustains: from the measured rate, else efficiency x peak."""
        if self.reference_images_per_second:
            macs = self.reference_macs or macs_lookup(self.reference_model)
            return self.reference_images_per_second * TRAINING_FLOPS_PER_MAC * macs
        return (self.efficiency or 0.0) * self.peak_flops


@dataclass(frozen=True)
class Network:
    name: str
    description: str
    bandwidth: float                     # bytes/s of data per link, one direction
    latency: float                       # seconds per message step (small-message latency)
    source: str = ""


# --- shared efficiency factors (one per device, stated) ---------------------------------------

# Intel measured 135 training images/s for ResNet-50 on a 2-socket Xeon Platinum 8180 node
# (Intel Caffe, batch 512, dummy data; "Intel Optimized Caffe Performance and Convergence",
# March 2018, slide 3, in the intel/caffe repository's results/ folder). Peak of one 8180:
# 28 cores x 2.5 GHz x 64 FP32 FLOPs/cycle (two AVX-512 FMA units) = 4.48 TFLOP/s.
SKYLAKE_SP_EFFICIENCY = (135 / 2) * TRAINING_FLOPS_PER_MAC * RESNET50_MACS / (28 * 2.5e9 * 64)  # ~0.37

# Goyal et al. 2017 (arXiv 1706.02677, sec. 5): 90 epochs of ResNet-50 took 29 hours on one
# server of 8 Tesla P100 (Caffe2, FP32, batch 256): 90 x 1,281,167 / (29 x 3600) / 8 per GPU.
P100_IMAGES_PER_SECOND = 90 * 1_281_167 / (29 * 3600) / 8  # ~138
P100_PEAK_FP32 = 10.6e12  # NVIDIA Tesla P100 SXM2 datasheet: 10.6 TFLOP/s FP32
P100_EFFICIENCY = P100_IMAGES_PER_SECOND * TRAINING_FLOPS_PER_MAC * RESNET50_MACS / P100_PEAK_FP32  # ~0.32

# NVIDIA DeepLearningExamples, PyTorch ResNet-50 v1.5 README (pytorch-21.03 container): one V100
# 16GB of a DGX-1, mixed precision, 1,200 img/s. Peak: V100 SXM2 datasheet, 125 TFLOP/s tensor.
V100_IMAGES_PER_SECOND = 1200.0
V100_PEAK_FP16 = 125e12
V100_EFFICIENCY = V100_IMAGES_PER_SECOND * TRAINING_FLOPS_PER_MAC * RESNET50_MACS / V100_PEAK_FP16  # ~0.24


# --- the rate against the per-processor batch --------------------------------------------------

# NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md (pytorch-21.03
# container; the same README as the 1,200 img/s training rate), "Inference performance: NVIDIA
# DGX-1 (1x V100 16GB)": ResNet-50 v1.5 images/s at batch 1..256. No per-batch *training* table is
# published there (its training tables give batch 256 only), so the planner takes the SHAPE of these
# inference tables for training (ASSUMED: a training iteration repeats the forward's kernels about
# three times over, its fixed part and its per-image part alike, so R(b) / R(256) is the same) and
# the LEVEL from the training rate.
V100_TABLE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
V100_MIXED_TABLE = (78, 154, 300, 595, 1178, 2146, 2984, 3249, 3382)  # "Mixed Precision Inference Latency"
V100_FP32_TABLE = (96, 196, 386, 709, 1023, 1127, 1200, 1229, 1261)   # "FP32 Inference Latency"
V100_TABLE_SOURCE = ("NVIDIA DeepLearningExamples PyTorch ResNet-50 v1.5 README, inference on 1x V100 16GB at "
                     "batch 1-256 ({} table); shape assumed the same for training")

# Devices without a per-batch table of their own: the saturating form with b_half ASSUMED equal to
# the fit of that form to the V100 table of the same precision (relative least squares,
# curve.fit_saturating): about 11.7 images in FP32, 58 in mixed precision (that table's small-batch
# floor, about 13 ms per iteration up to batch 16, fits the form less well).
FP32_HALF_BATCH = fit_saturating(V100_TABLE_BATCHES, V100_FP32_TABLE)[1]
MIXED_HALF_BATCH = fit_saturating(V100_TABLE_BATCHES, V100_MIXED_TABLE)[1]
FP32_CURVE_SOURCE = (f"saturating form, b_half = {FP32_HALF_BATCH:.1f} assumed: the fit to NVIDIA's V100 FP32 "
                     "per-batch table (DeepLearningExamples ResNet-50 v1.5 README)")
MIXED_CURVE_SOURCE = (f"saturating form, b_half = {MIXED_HALF_BATCH:.0f} assumed: the fit to NVIDIA's V100 "
                      "mixed-precision per-batch table (DeepLearningExamples ResNet-50 v1.5 README)")

# --- the input pipeline -------------------------------------------------------------------------

# About 1,923 training images/s from 10 DataLoader workers with stock Pillow (JPEG decode, random-
# resized crop, flip) feeding one A100 (huggingface/pytorch-image-models#1491): ~190 per core.
DECODE_PER_CORE = 1923 / 10
DECODE_SOURCE = "huggingface/pytorch-image-models#1491: 1,923 img/s from 10 Pillow loader workers, ~190 per core"
# Knights Landing cores run at 1.4 GHz, two-wide (Silvermont-derived; Sodani et al., IEEE Micro
# 2016): ASSUMED a third of the rate of the Xeon core above.
KNL_DECODE_PER_CORE = DECODE_PER_CORE / 3


DEVICES: dict[str, Device] = {
    "knl": Device(
        name="knl", description="Intel Xeon Phi 7250 (Knights Landing), one per node",
        # Intel ARK: 68 cores, 1.40 GHz; 2 AVX-512 VPUs per core x 16 FP32 lanes x FMA = 64
        # FLOPs/cycle (Sodani et al., "Knights Landing", IEEE Micro 2016): 6.09 TFLOP/s FP32.
        peak_flops=68 * 1.4e9 * 64, precision="fp32",
        memory_bytes=16 * GB,  # 16 GB MCDRAM (TACC Stampede2 user guide: KNL nodes, + 96 GB DDR4)
        devices_per_node=1, intra_bandwidth=12.5 * GB, intra_latency=1e-6,  # unused: one per node
        network="omnipath-100g", links_per_node=1,  # Stampede2: 100 Gb/s Omni-Path, one per node
        # ASSUMED: no single-KNL ResNet-50 training rate is published that we could find; we take
        # the Skylake-SP efficiency (same MKL-DNN AVX-512 kernels). Dell's Intel Caffe study (HPC
        # Innovation Lab, March 2018) found a KNL node about as fast as a 2-socket Skylake
        # Platinum node, which would be higher still.
        efficiency=SKYLAKE_SP_EFFICIENCY,
        reference_batch=256,  # per processor in the Skylake measurement the efficiency comes from
        source="Intel ARK (peak); efficiency assumed from Intel's Xeon 8180 ResNet-50 measurement",
        half_batch=FP32_HALF_BATCH, curve_source=FP32_CURVE_SOURCE + "; no per-batch CPU table found",
        # 68 cores (Intel ARK); Caffe decodes on the training cores (input_pipeline.py).
        cores_per_node=68, decode_images_per_second=KNL_DECODE_PER_CORE, decoder="same-cores",
        input_source="Intel ARK (68 cores); " + DECODE_SOURCE + ", a third of it assumed per KNL core"),
    "skylake-8160": Device(
        name="skylake-8160", description="Intel Xeon Platinum 8160 socket, two per node",
        # Intel ARK: 24 cores, 2.10 GHz base; two AVX-512 FMA units: 64 FP32 FLOPs/cycle.
        peak_flops=24 * 2.1e9 * 64, precision="fp32",
        memory_bytes=96 * GB,  # Stampede2 SKX nodes: 192 GB DDR4 per 2-socket node
        # ASSUMED: MPI shared-memory copies between the two sockets at 10 GB/s, 0.5 us per step.
        devices_per_node=2, intra_bandwidth=10 * GB, intra_latency=0.5e-6,
        network="omnipath-100g", links_per_node=1,  # Stampede2 SKX nodes: 100 Gb/s Omni-Path
        efficiency=SKYLAKE_SP_EFFICIENCY, reference_batch=256,
        source="Intel ARK (peak); efficiency from Intel's 2x Xeon 8180 ResNet-50 training rate",
        half_batch=FP32_HALF_BATCH, curve_source=FP32_CURVE_SOURCE + "; no per-batch CPU table found",
        cores_per_node=48, decode_images_per_second=DECODE_PER_CORE, decoder="same-cores",  # 2 x 24 cores
        input_source="Intel ARK (24 cores per socket); " + DECODE_SOURCE),
    "p100": Device(
        name="p100", description="NVIDIA Tesla P100 SXM2 16GB, eight per node (NVLink)",
        peak_flops=P100_PEAK_FP32, precision="fp32",
        memory_bytes=16 * GB,  # P100 datasheet: 16 GB HBM2
        # P100 whitepaper: 4 NVLink links x 20 GB/s per direction; ASSUMED a ring on the DGX-1
        # hybrid cube-mesh gets half (40 GB/s); 5 us per step (NCCL) assumed.
        devices_per_node=8, intra_bandwidth=40 * GB, intra_latency=5e-6,
        network="ib-edr", links_per_node=4,  # NVIDIA DGX-1 datasheet: 4x InfiniBand EDR 100 Gb/s
        reference_model="resnet50", reference_images_per_second=P100_IMAGES_PER_SECOND, reference_batch=32,
        source="Goyal et al. 2017: 29 h for 90 epochs on 8 P100 (Caffe2, FP32)",
        half_batch=FP32_HALF_BATCH, curve_source=FP32_CURVE_SOURCE,
        # DGX-1 datasheet: 2x 20-core Xeon E5-2698 v4 per 8 GPUs.
        cores_per_node=40, decode_images_per_second=DECODE_PER_CORE,
        input_source="NVIDIA DGX-1 datasheet (40 cores); " + DECODE_SOURCE),
    "p40": Device(
        name="p40", description="NVIDIA Tesla P40 24GB (PCIe), eight per node",
        # P40 datasheet: 12 TFLOP/s FP32 (3840 cores x 1.531 GHz boost x 2 = 11.76).
        peak_flops=3840 * 1.531e9 * 2, precision="fp32",
        memory_bytes=24 * GB,  # P40 datasheet: 24 GB GDDR5
        # PCIe 3.0 x16: 15.75 GB/s; ASSUMED 12 GB/s achieved and 10 us per step.
        devices_per_node=8, intra_bandwidth=12 * GB, intra_latency=10e-6,
        # 100 Gb Ethernet, as Jia et al.'s P40 cluster (Mikami et al.'s table, quoted in NVIDIA's
        # news post on Sony's record); ASSUMED one link per node.
        network="ethernet-100g", links_per_node=1,
        # ASSUMED: no P40 training rate is published; same fraction of peak as the P100 (Pascal),
        # at the P100 rate's batch.
        efficiency=P100_EFFICIENCY, reference_batch=32,
        source="NVIDIA P40 datasheet (peak); efficiency assumed equal to the P100 preset's",
        half_batch=FP32_HALF_BATCH, curve_source=FP32_CURVE_SOURCE,
        cores_per_node=40, decode_images_per_second=DECODE_PER_CORE,  # ASSUMED: a DGX-1's 40 cores
        input_source="assumed 40 cores per 8 GPUs (as a DGX-1); " + DECODE_SOURCE),
    "v100": Device(
        name="v100", description="NVIDIA Tesla V100 SXM2 16GB, eight per node (NVLink)",
        peak_flops=V100_PEAK_FP16, precision="fp16 tensor (mixed precision)",
        memory_bytes=16 * GB,  # V100 datasheet: 16 or 32 GB HBM2
        # V100 whitepaper: 6 NVLink 2 links x 25 GB/s per direction; ASSUMED half for a ring on
        # the DGX-1 hybrid cube-mesh (75 GB/s); 5 us per step assumed.
        devices_per_node=8, intra_bandwidth=75 * GB, intra_latency=5e-6,
        network="ib-edr", links_per_node=4,  # NVIDIA DGX-1 datasheet: 4x InfiniBand EDR 100 Gb/s
        reference_model="resnet50", reference_images_per_second=V100_IMAGES_PER_SECOND, reference_batch=256,
        source="NVIDIA DeepLearningExamples ResNet-50 v1.5 PyTorch, 1 V100 16GB, AMP, batch 256: 1,200 img/s",
        curve_batches=V100_TABLE_BATCHES, curve_images_per_second=V100_MIXED_TABLE,
        curve_source=V100_TABLE_SOURCE.format("mixed precision"),
        cores_per_node=40, decode_images_per_second=DECODE_PER_CORE,  # DGX-1: 2x 20-core E5-2698 v4
        input_source="NVIDIA DGX-1 datasheet (40 cores); " + DECODE_SOURCE),
    "a100": Device(
        name="a100", description="NVIDIA A100 SXM4 80GB, eight per node (NVSwitch)",
        peak_flops=312e12, precision="bf16/fp16 tensor (mixed precision)",  # A100 datasheet, dense
        memory_bytes=80 * GB,
        # A100 datasheet: NVLink 3, 600 GB/s per GPU (300 per direction) through NVSwitch.
        devices_per_node=8, intra_bandwidth=300 * GB, intra_latency=5e-6,
        network="ib-hdr", links_per_node=8,  # DGX A100 datasheet: 8x ConnectX-6 HDR 200 Gb/s
        reference_model="resnet50", reference_images_per_second=2470.0, reference_batch=256,
        source="NVIDIA DeepLearningExamples ResNet-50 v1.5 PyTorch, 1 A100 80GB, AMP, batch 256: 2,470 img/s",
        half_batch=MIXED_HALF_BATCH, curve_source=MIXED_CURVE_SOURCE,
        cores_per_node=128, decode_images_per_second=DECODE_PER_CORE,  # DGX A100: 2x 64-core EPYC 7742
        input_source="NVIDIA DGX A100 datasheet (128 cores); " + DECODE_SOURCE),
    "h100": Device(
        name="h100", description="NVIDIA H100 SXM5 80GB, eight per node (NVSwitch)",
        peak_flops=989e12, precision="bf16/fp16 tensor (mixed precision)",  # H100 datasheet, dense
        memory_bytes=80 * GB,
        # H100 datasheet: NVLink 4, 900 GB/s per GPU (450 per direction) through NVSwitch.
        devices_per_node=8, intra_bandwidth=450 * GB, intra_latency=5e-6,
        network="ib-ndr", links_per_node=8,  # DGX H100 datasheet: 8x ConnectX-7 400 Gb/s
        # Lambda's PyTorch benchmark, about 2,790 img/s (as quoted in the project's peers notes,
        # not re-checked here; its batch ASSUMED 256). NVIDIA's MLPerf stack reaches about 6,970:
        # pass --images-per-second to plan for it.
        reference_model="resnet50", reference_images_per_second=2790.0, reference_batch=256,
        source="Lambda PyTorch benchmark, 1 H100, AMP: about 2,790 img/s",
        half_batch=MIXED_HALF_BATCH, curve_source=MIXED_CURVE_SOURCE,
        cores_per_node=112, decode_images_per_second=DECODE_PER_CORE,  # DGX H100: 2x 56-core Xeon 8480C
        input_source="NVIDIA DGX H100 datasheet (112 cores); " + DECODE_SOURCE),
    "tpu-v3": Device(
        name="tpu-v3", description="Google TPU v3 chip (2 cores), four per host, 2-D torus ICI",
        peak_flops=123e12, precision="bf16",  # Google Cloud TPU docs: 123 TFLOP/s per v3 chip
        memory_bytes=32 * GB,                # 32 GiB HBM per v3 chip (16 per core)
        devices_per_node=4, intra_bandwidth=2 * 656 * Gbit, intra_latency=1e-6,  # ICI, as below
        network="tpu-ici", links_per_node=4,
        # google-deepmind/dm-haiku examples/imagenet: ResNet-50 (v2), 90 epochs (train.py) of the
        # 1,281,167 images at batch 1,024 on 32 TPU v3 cores (16 chips, 32 images per core) in
        # 130 minutes (README): 90 x 1,281,167 / 7,800 s / 16 = 924 img/s per chip, evaluation
        # and start-up included.
        reference_model="resnet50", reference_images_per_second=90 * 1_281_167 / (130 * 60) / 16,
        reference_batch=64,
        source="dm-haiku ImageNet example: ResNet-50, batch 1,024 on 16 TPU v3 chips, 90 epochs in 130 min",
        half_batch=MIXED_HALF_BATCH, curve_source=MIXED_CURVE_SOURCE + "; no per-batch TPU table found",
        # ASSUMED: 48 cores per host of 4 chips (a Cloud TPU v3-8 host VM has 96 vCPUs).
        cores_per_node=48, decode_images_per_second=DECODE_PER_CORE,
        input_source="assumed 48 cores per host (Cloud TPU v3-8 host: 96 vCPUs); " + DECODE_SOURCE),
    "cpu-local": Device(
        name="cpu-local", description="this project's 2-core AMD EPYC (Zen 3) VM, one process",
        # Zen 3: two 256-bit FMA pipes = 32 FP32 FLOPs/cycle/core; 2 cores x ~2.45 GHz (the
        # VM reports BogoMIPS 4890). Nominal only: the rate below is what counts.
        peak_flops=2 * 2.45e9 * 32, precision="fp32",
        memory_bytes=8 * GB,
        devices_per_node=1, intra_bandwidth=1 * GB, intra_latency=50e-6,
        network="localhost", links_per_node=1,
        # About 1,400 training images/s for fast_resnet on the idle VM (FastResNet's docstring in
        # largebatch.models.small); `largebatch benchmark` measured only ~100 under a load average
        # of 8 (docs/planner.md). Re-calibrate with `largebatch benchmark` and --device-file.
        reference_model="fast_resnet", reference_images_per_second=1400.0, reference_batch=256,
        source="fast_resnet on the idle VM, about 1,400 img/s (largebatch.models.small)",
        curve_source="constant (no curve): measure one with 'largebatch benchmark'",
        # benchmarks/loader.json: our loader, full decode of 500x375 JPEGs to 224, 332 images per
        # CPU-second; the loader shares the two cores with training.
        cores_per_node=2, decode_images_per_second=332.0, decoder="same-cores",
        input_source="benchmarks/loader.json on this VM: 332 images per CPU-second (full decode, 224 px)"),
}

NETWORKS: dict[str, Network] = {
    # Ethernet data rates are the line rates; ASSUMED 25 us per message step for MPI/gloo over
    # TCP sockets (RDMA over Converged Ethernet would be nearer 2-3 us).
    "ethernet-10g": Network("ethernet-10g", "10 Gb/s Ethernet, TCP", 10 * Gbit, 25e-6, "IEEE 802.3 10GBASE"),
    "ethernet-25g": Network("ethernet-25g", "25 Gb/s Ethernet, TCP", 25 * Gbit, 25e-6, "IEEE 802.3by"),
    "ethernet-50g": Network("ethernet-50g", "50 Gb/s Ethernet, TCP", 50 * Gbit, 25e-6, "IEEE 802.3cd"),
    "ethernet-100g": Network("ethernet-100g", "100 Gb/s Ethernet, TCP", 100 * Gbit, 25e-6, "IEEE 802.3ba"),
    # InfiniBand 4x links, data rate after 64b/66b coding (InfiniBand Trade Association roadmap):
    # FDR 4 x 14.0625 Gb/s x 64/66 = 54.5 Gb/s; EDR 100, HDR 200, NDR 400 Gb/s. ASSUMED 1 us MPI
    # small-message latency (Mellanox ConnectX-3..7 product briefs state 0.6-0.7 us adapter latency).
    "ib-fdr": Network("ib-fdr", "InfiniBand FDR 4x (56 Gb/s)", 4 * 14.0625 * 64 / 66 * Gbit, 1e-6, "IBTA; Mellanox ConnectX-3"),
    "ib-edr": Network("ib-edr", "InfiniBand EDR 4x (100 Gb/s)", 100 * Gbit, 1e-6, "IBTA; Mellanox ConnectX-4"),
    "ib-hdr": Network("ib-hdr", "InfiniBand HDR 4x (200 Gb/s)", 200 * Gbit, 1e-6, "IBTA; Mellanox ConnectX-6"),
    "ib-ndr": Network("ib-ndr", "InfiniBand NDR 4x (400 Gb/s)", 400 * Gbit, 1e-6, "IBTA; NVIDIA ConnectX-7"),
    # Intel Omni-Path Architecture 100 series: 100 Gb/s per port (Intel OPA product brief); it is
    # the network of TACC Stampede2 (user guide: fat tree, 100 Gb/s). ASSUMED 1 us MPI latency.
    "omnipath-100g": Network("omnipath-100g", "Intel Omni-Path 100 Gb/s", 100 * Gbit, 1e-6, "Intel OPA 100 product brief"),
    # TPU v3 inter-chip interconnect: 4 links of 656 Gb/s per chip (Jouppi et al., "A domain-
    # specific supercomputer for training deep neural networks", CACM 2020, Table 3). ASSUMED: a
    # bidirectional ring on the 2-D torus uses 2 links per chip, 1 us per step.
    "tpu-ici": Network("tpu-ici", "TPU v3 ICI, 2-D torus", 2 * 656 * Gbit, 1e-6, "Jouppi et al. CACM 2020"),
    # gloo all-reduce between two processes on this VM: the alpha-beta fit of the fastest repeats
    # in benchmarks/allreduce.py (1.19 GB/s, 101 us per step; docs/planner.md).
    "localhost": Network("localhost", "gloo between 2 processes on this VM", 1.19 * GB, 101e-6,
                         "benchmarks/allreduce.py on this VM"),
}


def _names(table: dict) -> str:
    return ", ".join(sorted(table))


def get_device(name: str) -> Device:
    if name not in DEVICES:
        raise ConfigError(f"--device: unknown device '{name}' (choose from {_names(DEVICES)}, "
                          "or give --device-file PATH from 'largebatch benchmark')")
    return DEVICES[name]


def get_network(name: str) -> Network:
    if name not in NETWORKS:
        raise ConfigError(f"--network: unknown network '{name}' (choose from {_names(NETWORKS)})")
    return NETWORKS[name]


# --- presets from a file (written by `largebatch benchmark`) ---------------------------------

def preset_to_dict(device: Device, network: Network | None, measured: dict | None = None) -> dict:
    """The JSON object ``largebatch benchmark`` writes and ``plan --device-file`` reads."""
    document = {"format": "largebatch-device/1", "device": asdict(device)}
    if network is not None:
        document["network"] = asdict(network)
    if measured:
        document["measured"] = measured
    return document


def _build(kind, values: dict, path: str, section: str):
    allowed = {f.name for f in fields(kind)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{section}.{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")
    values = dict(values)
    for name, value in values.items():
        if isinstance(value, list):  # JSON arrays: the per-batch table
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
                raise ConfigError(f"{path}: {section}.{name} must be a list of numbers")
            values[name] = tuple(value)
        elif isinstance(value, dict):
            raise ConfigError(f"{path}: {section}.{name} must be a number, a string or a list of numbers")
    try:
        item = kind(**values)
    except TypeError as error:
        raise ConfigError(f"{path}: [{section}] is incomplete ({error}); write it again with 'largebatch benchmark'") from None
    for f in fields(kind):
        value = getattr(item, f.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (not math.isfinite(value) or value < 0):
            raise ConfigError(f"{path}: {section}.{f.name} must be a finite number >= 0, got {value}")
    return item


def check_device_curve(device: Device, where: str) -> None:
    """Raise ConfigError if the device's rate curve or input pipeline is unusable."""
    if device.curve_batches or device.curve_images_per_second:
        check_table(device.curve_batches, device.curve_images_per_second, f"{where}: device.curve_batches")
        if not device.reference_batch:
            raise ConfigError(f"{where}: a device with a per-batch table needs reference_batch")
    if device.half_batch and not device.reference_batch:
        raise ConfigError(f"{where}: a device with half_batch needs reference_batch")
    if device.decoder not in DECODERS:
        raise ConfigError(f"{where}: device.decoder must be one of {', '.join(DECODERS)}, got '{device.decoder}'")


def load_preset_file(path: str | Path) -> tuple[Device, Network | None]:
    """Read a device preset (and its measured network, if any) from a JSON file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--device-file: {path} does not exist (write one with 'largebatch benchmark --output {path}')") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"--device-file: cannot read {path} as JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("device"), dict):
        raise ConfigError(f"--device-file: {path} has no 'device' object (write one with 'largebatch benchmark')")
    device = _build(Device, document["device"], str(path), "device")
    if not device.reference_images_per_second and not device.efficiency:
        raise ConfigError(f"--device-file: {path}: device needs reference_images_per_second or efficiency")
    check_device_curve(device, f"--device-file: {path}")
    network = None
    if isinstance(document.get("network"), dict):
        network = _build(Network, document["network"], str(path), "network")
    return device, network
