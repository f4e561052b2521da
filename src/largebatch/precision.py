"""Numeric precision of the training step: autocast for the forward pass, a gradient scaler for
fp16, and fp64 for numerical verification.

BatchNorm and the optimizer stay in fp32 under autocast (torch keeps BN and the loss in fp32, and
the weights, gradients and optimizer state are fp32 tensors throughout).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from largebatch.config import PRECISIONS  # noqa: F401  (re-exported: the benchmarks' --precision choices)
from largebatch.errors import ConfigError



def resolve(name: str, device: torch.device) -> str:
    """``auto``: bf16 on a CUDA device that supports it (Ampere and newer), fp32 elsewhere (CPUs
    without bf16 units run bf16 autocast slower than fp32)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("run.precision: fp16 with loss scaling needs a CUDA device; use bf16 or fp32 on CPU")
    return name


@dataclass
class Precision:
    name: str
    device_type: str
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def build(cls, name: str, device: torch.device) -> Precision:
        resolved = resolve(name, device)
        scaler = torch.amp.GradScaler(device.type) if resolved == "fp16" else None
        return cls(resolved, device.type, scaler)

    @property
    def parameter_dtype(self) -> torch.dtype:
        return torch.float64 if self.name == "fp64" else torch.float32

    def autocast(self):
        """Context for the forward pass and loss."""
        if self.name in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
            return torch.autocast(self.device_type, dtype=dtype)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Optimizer step; returns False when fp16 loss scaling skipped it (inf/NaN gradients),
        leaving weights and optimizer state unchanged."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scale only drops when the step was skipped
