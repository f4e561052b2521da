"""An optimizer step that is skipped on the device when a gradient is not finite.

The host never reads whether the step was skipped: the decision is a 0-dim tensor on the device
(``found_inf``, as ``GradScaler`` and torch's fused optimizers keep it), and the weights and
optimizer state are put back with ``torch.where`` when it is set. So a step costs no
device-to-host synchronisation, and a non-finite loss never changes the weights. The flags are
read at the training loop's log boundaries, where the skipped steps are counted and reported.

With fp16 loss scaling, the gradients are unscaled first (``GradScaler.unscale_``) and the
scaler's scale is updated after the step (``GradScaler.update``): neither reads the device.
"""

from __future__ import annotations

import torch
from torch import Tensor


def non_finite(tensors: list[Tensor]) -> Tensor:
    """A 0-dim bool tensor on the tensors' device: True when any element of any tensor is NaN or
    infinite (the sum of the per-tensor norms is then not finite)."""
    norms = torch._foreach_norm(tensors)
    return ~torch.isfinite(torch.stack(norms).sum())


class GuardedStep:
    """``guarded(optimizer)`` steps ``optimizer`` unless a gradient is not finite; returns the
    0-dim bool ``found_inf`` tensor on the device.

    Skipping keeps every parameter and every floating-point state tensor of the optimizer as it
    was: they are copied before the step into buffers kept between steps (one more copy of the
    parameters and of the optimizer state in memory) and selected back where ``found_inf`` is set.
    State created by a skipped first step (SGD's momentum buffer) is set to zero, which is what a
    fresh buffer holds. Integer state (LAMB's step count, a Python number) still advances on a
    skipped step.
    """

    def __init__(self, scaler: torch.amp.GradScaler | None = None):
        self.scaler = scaler
        self._backup: dict[Tensor, Tensor] = {}

    def _tensors(self, optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], list[Tensor]]:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        state = [value for p in params for value in optimizer.state.get(p, {}).values()
                 if isinstance(value, Tensor) and value.is_floating_point() and value.dim() > 0]
        return params, state

    @torch.no_grad()
    def __call__(self, optimizer: torch.optim.Optimizer) -> Tensor:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        params, state = self._tensors(optimizer)
        if not params:
            raise RuntimeError("no parameter has a gradient: nothing to step")
        found_inf = non_finite([p.grad for p in params])
        kept = params + state
        backups = [self._backup_for(t) for t in kept]
        torch._foreach_copy_(backups, kept)
        optimizer.step()
        for tensor, backup in zip(kept, backups):
            torch.where(found_inf, backup, tensor, out=tensor)
        _, state_after = self._tensors(optimizer)
        known = {id(t) for t in state}
        for tensor in state_after:
            if id(tensor) not in known:  # created by this step
                torch.where(found_inf, torch.zeros((), dtype=tensor.dtype, device=tensor.device), tensor, out=tensor)
        if self.scaler is not None:
            self.scaler.update()
        return found_inf

    def _backup_for(self, tensor: Tensor) -> Tensor:
        backup = self._backup.get(tensor)
        if backup is None or backup.shape != tensor.shape or backup.dtype != tensor.dtype:
            backup = torch.empty_like(tensor, memory_format=torch.preserve_format)
            self._backup[tensor] = backup
        return backup
