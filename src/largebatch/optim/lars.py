"""LARS: Layer-wise Adaptive Rate Scaling (You, Gitman, Ginsburg 2017, Algorithm 1)."""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    r"""LARS as published, per parameter tensor w with gradient g:

        local_lr = eta * ||w|| / (||g|| + beta * ||w|| + eps)     (1 where ||w|| or ||g|| is 0)
        v <- m * v + lr * local_lr * (g + beta * w)
        w <- w - v

    eta is ``trust_coefficient``, beta ``weight_decay``, m ``momentum``. The global LR sits
    inside the velocity, as in the paper. Every tensor is adapted, biases and BatchNorm included.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                trust = group["trust_coefficient"] * w_norm / (
                    g_norm + group["weight_decay"] * w_norm + group["eps"])
                trust = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                update = g.add(p, alpha=group["weight_decay"]).mul_(trust * group["lr"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                v = state["momentum_buffer"]
                v.mul_(group["momentum"]).add_(update)
                p.sub_(v)
        return loss
