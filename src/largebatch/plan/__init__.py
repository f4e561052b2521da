"""Time-to-train planner: a compute and communication model of synchronous data-parallel SGD.

Torch-free, so ``largebatch plan`` answers at once. ``plan_time(setup, batch_size, processors)``
is the one pure function the rest builds on (estimate.py); the rate against the per-processor
batch is in curve.py, the input pipeline in input_pipeline.py, all-reduce costs in allreduce.py
and their overlap with the backward pass in overlap.py, device and network presets with their
sources in presets.py, the published records it is checked against in records.py.
"""

from largebatch.plan.estimate import ModelCost, Plan, Setup, model_cost, plan_time
from largebatch.plan.presets import DEVICES, NETWORKS, Device, Network, get_device, get_network, load_preset_file

__all__ = ["DEVICES", "NETWORKS", "Device", "ModelCost", "Network", "Plan", "Setup", "get_device",
           "get_network", "load_preset_file", "model_cost", "plan_time"]
