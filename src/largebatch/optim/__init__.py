"""Optimizers: LARS (the paper's), and torch's SGD as the small-batch baseline."""

from __future__ import annotations

import torch
from torch import nn

from largebatch.errors import ConfigError
from largebatch.optim.lars import LARS


def build_optimizer(optimizer_config, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The optimizer named in the config, over all of ``model``'s parameters, at rate ``lr``."""
    c = optimizer_config
    params = [p for p in model.parameters() if p.requires_grad]
    if c.name == "lars":
        return LARS(params, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay,
                    trust_coefficient=c.trust_coefficient, eps=c.eps)
    if c.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay,
                               nesterov=c.nesterov, foreach=True)
    raise ConfigError(f"optimizer: '{c.name}' is not available yet")
