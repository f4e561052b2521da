"""Optimizers: LARS (the paper's, with its variants as switches), LARC, LAMB, and torch's SGD as
the small-batch baseline; parameter groups by stated rules. See docs/optimizers.md."""

from __future__ import annotations

import math

import torch
from torch import nn

from largebatch.errors import ConfigError
from largebatch.optim.groups import describe_groups, parameter_groups
from largebatch.optim.lamb import LAMB
from largebatch.optim.lars import LARS

__all__ = ["LARS", "LAMB", "build_optimizer", "describe_groups", "parameter_groups", "trust_ratio_summary"]


def build_optimizer(optimizer_config, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The optimizer named in ``optimizer_config`` (an ``OptimizerConfig``) over ``model``'s
    trainable parameters, grouped by its skip_adaptation / skip_weight_decay rules, each group at
    rate ``lr * group["lr_scale"]``. Print :func:`describe_groups` of the result once at start."""
    c = optimizer_config
    trust_ratio_max = c.trust_ratio_max if c.trust_ratio_max > 0 else math.inf
    if c.trust_ratio_min > trust_ratio_max:
        raise ConfigError(f"optimizer.trust_ratio_min ({c.trust_ratio_min}) exceeds optimizer.trust_ratio_max "
                          f"({c.trust_ratio_max}); lower the minimum or raise the maximum (0: no maximum)")
    if c.name == "lamb" and (c.momentum >= 1.0 or c.lamb_beta2 >= 1.0):
        raise ConfigError("optimizer.momentum (LAMB's beta1) and optimizer.lamb_beta2 must be below 1 for "
                          "lamb: its bias correction divides by 1 - beta^t")
    if c.name != "lamb" and c.nesterov and c.momentum == 0:
        raise ConfigError("optimizer.nesterov needs optimizer.momentum > 0")
    groups = parameter_groups(model, c.weight_decay, c.skip_adaptation, c.skip_weight_decay,
                              c.skip_adaptation_lr_scale, c.skip_weight_decay_lr_scale,
                              adaptive=c.name != "sgd")
    if not groups:
        raise ConfigError("the model has no trainable parameters to optimize")
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    if c.name in ("lars", "larc"):
        return LARS(groups, lr=lr, momentum=c.momentum, trust_coefficient=c.trust_coefficient, eps=c.eps,
                    nesterov=c.nesterov, clip=c.name == "larc", trust_denominator=c.trust_denominator,
                    lr_in_velocity=c.lr_in_velocity, trust_ratio_min=c.trust_ratio_min,
                    trust_ratio_max=trust_ratio_max, zero_norm=c.zero_norm)
    if c.name == "lamb":
        return LAMB(groups, lr=lr, betas=(c.momentum, c.lamb_beta2), eps=c.lamb_eps,
                    trust_ratio_min=c.trust_ratio_min, trust_ratio_max=trust_ratio_max)
    if c.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=c.momentum, nesterov=c.nesterov, foreach=True)
    raise ConfigError(f"optimizer: unknown optimizer '{c.name}' (choose from lars, larc, lamb, sgd)")


def trust_ratio_summary(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """[min, median, max] of the last step's trust ratios as a tensor on the device, or None for
    optimizers without trust ratios (SGD), before the first step, or when no tensor is adapted.
    Reading its values (``.tolist()``) waits for the device: do it only on logging steps."""
    summary = getattr(optimizer, "trust_ratio_summary", None)
    return summary() if summary is not None else None
