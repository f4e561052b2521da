"""What the multi-tensor steps of LARS and LAMB share: how the tensors are taken in chunks, and
how the last step's trust ratios are gathered."""

from __future__ import annotations

import torch
from torch import Tensor

# On a CPU the step is limited by memory bandwidth. Taking the tensors about 4 MB (float32) at a
# time keeps each chunk's weights, gradients and state in cache (32 MB L3 on our 2-core VM) from
# one operation to the next, so they come from main memory once per step, not once per
# operation. Measured on ResNet-50's tensors: about 25% off the update phase.
CPU_CHUNK_ELEMENTS = 1 << 20


def chunks(tensors: list[Tensor]) -> list[tuple[int, int]]:
    """[start, end) index ranges covering ``tensors`` in order: on a CPU, runs of consecutive
    tensors of at most CPU_CHUNK_ELEMENTS values (a larger tensor alone); elsewhere one range, so
    that a GPU gets the fewest kernel launches."""
    if not tensors or tensors[0].device.type != "cpu":
        return [(0, len(tensors))]
    ranges, start, size = [], 0, 0
    for index, tensor in enumerate(tensors):
        if index > start and size + tensor.numel() > CPU_CHUNK_ELEMENTS:
            ranges.append((start, index))
            start, size = index, 0
        size += tensor.numel()
    ranges.append((start, len(tensors)))
    return ranges


def concatenate(tensors: list[Tensor]) -> Tensor | None:
    """One 1-D tensor on the first one's device (copies between devices do not wait); None if empty."""
    if not tensors:
        return None
    device = tensors[0].device
    return torch.cat([t.to(device, non_blocking=True) for t in tensors])


def summary(ratios: Tensor | None) -> Tensor | None:
    """[min, median, max] as a 3-element tensor on the same device; None when there is nothing."""
    if ratios is None or ratios.numel() == 0:
        return None
    return torch.stack([ratios.min(), ratios.median(), ratios.max()])
