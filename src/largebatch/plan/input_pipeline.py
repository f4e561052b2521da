"""The input pipeline: decoding and augmenting the training images, and where it runs.

One number per core, ``decode_images_per_second``: training images (JPEG decode, random-resized
crop, flip, to a batch tensor) one CPU core prepares per second. Where decoding runs decides how
it meets the training step:

- ``other-cores``: loader processes on the node's CPU cores prepare the next batch while the
  processors (GPUs, TPUs) train; the node's cores are shared by its processors. The iteration
  takes the slower of the two: max(compute + exposed all-reduce, decode).
- ``same-cores``: a CPU processor decodes on the cores it trains with (Caffe's data layer runs
  its transforms in OpenMP tasks on the training threads, intel/caffe src/caffe/layers/
  data_layer.cpp). The iteration pays both: compute + decode + exposed all-reduce.
- ``gpu``: the accelerator decodes (nvJPEG, DALI "mixed", a hardware JPEG engine); not a separate
  term: the device's measured rate is taken to include it.
- ``none``: nothing to decode: the data set is held in memory as tensors, as this project loads
  MNIST-, Fashion-MNIST- and CIFAR-sized data. The planner takes this by default for models whose
  input is 32 pixels or smaller (largebatch.model_costs), whatever the device preset says.
"""

from __future__ import annotations

import math

from largebatch.errors import ConfigError

DECODERS = ("other-cores", "same-cores", "gpu", "none")
IN_MEMORY_MAX_INPUT_SIZE = 32  # pixels: models this small train on in-memory tensors here


def images_per_second(decoder: str, cores_per_node: int | None, processors_per_node: int,
                      decode_images_per_second: float | None) -> float:
    """Training images/s the input pipeline delivers to one processor (inf: not a limit)."""
    if decoder not in DECODERS:
        raise ConfigError(f"--decoder: unknown place '{decoder}' (choose from {', '.join(DECODERS)})")
    if decoder in ("gpu", "none") or not cores_per_node or not decode_images_per_second:
        return math.inf
    return cores_per_node * decode_images_per_second / max(1, processors_per_node)
