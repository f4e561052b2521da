"""Parameter groups by stated rules: which tensors skip the trust ratio, which skip weight decay.

A rule looks at a tensor's rank or at the type of the module that owns it, never at substrings
of parameter names:

- ``none``: no tensor (the paper: LARS adapts and decays every tensor, biases and BN included);
- ``1d``: tensors of rank 0 or 1 (biases, normalization scales and shifts; SimCLR-style and
  Facebook's self-supervised code);
- ``bn_bias``: every parameter of a normalization layer, and the ``bias`` parameter of any module
  (the TF and MLPerf reference LARS exclude these, there by name);
- ``bn``: every parameter of a normalization layer, biases of other layers not included (Goyal et
  al. 2017, sec. 5.1: no weight decay on "the learnable BN coefficients (namely, gamma and
  beta)"; NVIDIA's MLPerf ResNet-50 decays the classifier's bias but not BN's).

Each rule has its own LR multiplier; a tensor that both rules select gets the product.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from largebatch.config import EXCLUSION_RULES


NORMALIZATION_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def selected(rule: str, module: nn.Module, attribute: str, parameter: torch.Tensor) -> bool:
    """Whether ``rule`` selects ``parameter``, held by ``module`` as attribute ``attribute``."""
    if rule == "none":
        return False
    if rule == "1d":
        return parameter.ndim <= 1
    if rule == "bn_bias":
        return isinstance(module, NORMALIZATION_LAYERS) or attribute == "bias"
    if rule == "bn":
        return isinstance(module, NORMALIZATION_LAYERS)
    raise ValueError(f"unknown exclusion rule {rule!r} (choose from {', '.join(EXCLUSION_RULES)})")


def parameter_groups(model: nn.Module, weight_decay: float, skip_adaptation: str = "none",
                     skip_weight_decay: str = "none", skip_adaptation_lr_scale: float = 1.0,
                     skip_weight_decay_lr_scale: float = 1.0, adaptive: bool = True) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` in up to four groups, in model order within each:

    ========================  =======  ============  ================================================
    group ``name``            adapt    weight_decay  lr_scale
    ========================  =======  ============  ================================================
    adapted, decayed          True     weight_decay  1
    adapted, not decayed      True     0             skip_weight_decay_lr_scale
    not adapted, decayed      False    weight_decay  skip_adaptation_lr_scale
    not adapted, not decayed  False    0             skip_adaptation_lr_scale * skip_weight_decay_lr_scale
    ========================  =======  ============  ================================================

    Empty groups are left out. ``adaptive=False`` (plain SGD) ignores ``skip_adaptation`` and
    names groups by weight decay only. The training loop sets ``group["lr"] = lr * group["lr_scale"]``
    every step. A parameter shared by several modules is placed once, by its first owner.
    """
    members: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (True, True): [], (True, False): [], (False, True): [], (False, False): []}
    seen: set[int] = set()
    for module in model.modules():
        for attribute, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            adapt = not (adaptive and selected(skip_adaptation, module, attribute, parameter))
            decay = not selected(skip_weight_decay, module, attribute, parameter)
            members[(adapt, decay)].append(parameter)
    groups = []
    for (adapt, decay), params in members.items():
        if not params:
            continue
        lr_scale = ((1.0 if adapt else skip_adaptation_lr_scale)
                    * (1.0 if decay else skip_weight_decay_lr_scale))
        name = "decayed" if decay else "not decayed"
        if adaptive:
            name = f"{'adapted' if adapt else 'not adapted'}, {name}"
        groups.append({"params": params, "name": name, "adapt": adapt,
                       "weight_decay": weight_decay if decay else 0.0, "lr_scale": lr_scale})
    return groups


def describe_groups(optimizer: torch.optim.Optimizer, label: str = "") -> str:
    """One line: each group's name, tensor and value counts, weight decay and LR multiplier."""
    parts = []
    for index, group in enumerate(optimizer.param_groups):
        params = group["params"]
        parts.append(f"{group.get('name', f'group {index}')}: {len(params)} tensors, "
                     f"{sum(p.numel() for p in params):,} values, wd {group.get('weight_decay', 0.0):g}, "
                     f"lr x{group.get('lr_scale', 1.0):g}")
    return f"{label or type(optimizer).__name__} parameter groups: " + " | ".join(parts)
