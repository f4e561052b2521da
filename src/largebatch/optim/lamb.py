"""LAMB: layer-wise adaptive moments (You, Li, Reddi et al. 2019, "Large Batch Optimization for
Deep Learning: Training BERT in 76 minutes", Algorithm 2), with the same two implementations as
:mod:`largebatch.optim.lars`: multi-tensor by default, a per-tensor reference loop for tests."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from largebatch.optim.layerwise import LayerwiseOptimizer
from largebatch.optim.multi_tensor import chunks


class LAMB(LayerwiseOptimizer):
    r"""LAMB, per parameter tensor w with gradient g at step t (counted from 1):

        m <- beta1 * m + (1 - beta1) * g            v <- beta2 * v + (1 - beta2) * g^2
        m_hat = m / (1 - beta1^t)                   v_hat = v / (1 - beta2^t)
        r = m_hat / (sqrt(v_hat) + eps) + weight_decay * w
        trust = ||w|| / ||r||                       (1 where ||w|| or ||r|| is 0)
        w <- w - lr * trust * r

    The paper's scaling function phi is the identity unless ``trust_ratio_min`` /
    ``trust_ratio_max`` bound the trust ratio. ``adapt=False`` (a group key) sets trust = 1
    (Adam with decoupled weight decay for that group). There is no gradient clipping: clip
    before calling ``step`` if you want it. :meth:`trust_ratios` holds the last step's trust
    ratios of adapted tensors, on the device.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 trust_ratio_min: float = 0.0, trust_ratio_max: float = math.inf, adapt: bool = True,
                 foreach: bool = True):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        trust_ratio_min=trust_ratio_min, trust_ratio_max=trust_ratio_max, adapt=adapt)
        super().__init__(params, defaults, foreach)  # workspaces hold the update r

    @staticmethod
    def check_group(group: dict[str, Any]) -> None:
        _check_group(group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One LAMB step over every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._trust_ratios = []
        for group in self.param_groups:
            _check_group(group)
            by_device: dict[torch.device, tuple[list, ...]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0  # a Python int: bias corrections never read the device
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params, grads, exp_avgs, exp_avg_sqs, steps, workspace = by_device.setdefault(
                    p.device, ([], [], [], [], [], []))
                if self.foreach:
                    workspace.append(self.workspace(p))
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            options = {key: group[key] for key in ("lr", "betas", "eps", "weight_decay", "trust_ratio_min",
                                                   "trust_ratio_max", "adapt")}
            for params, grads, exp_avgs, exp_avg_sqs, steps, workspace in by_device.values():
                if self.foreach:
                    ratios = _multi_tensor_step(params, grads, exp_avgs, exp_avg_sqs, steps, workspace, **options)
                else:
                    ratios = _reference_step(params, grads, exp_avgs, exp_avg_sqs, steps, **options)
                if group["adapt"]:
                    self._trust_ratios.append(ratios)
        return loss


def _check_group(group: dict[str, Any]) -> None:
    beta1, beta2 = group["betas"]
    if not isinstance(group["lr"], (int, float)) or group["lr"] < 0:
        raise ValueError(f"LAMB: lr must be a number >= 0, got {group['lr']!r}")
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"LAMB: betas must be in [0, 1), got {group['betas']}")
    if group["eps"] <= 0 or group["weight_decay"] < 0:
        raise ValueError("LAMB: eps must be > 0 and weight_decay >= 0")
    if not 0.0 <= group["trust_ratio_min"] <= group["trust_ratio_max"]:
        raise ValueError(f"LAMB: need 0 <= trust_ratio_min <= trust_ratio_max, got "
                         f"{group['trust_ratio_min']} and {group['trust_ratio_max']}")


def _bound(ratio: Tensor, trust_ratio_min: float, trust_ratio_max: float) -> Tensor:
    if trust_ratio_min > 0 or trust_ratio_max < math.inf:
        ratio = ratio.clamp(min=trust_ratio_min, max=trust_ratio_max)
    return ratio


def _reference_step(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                    exp_avg_sqs: list[Tensor], steps: list[int], *, lr: float, betas: tuple[float, float],
                    eps: float, weight_decay: float, trust_ratio_min: float, trust_ratio_max: float,
                    adapt: bool) -> Tensor:
    """The step written per tensor, as in the class docstring; returns the trust ratio per tensor."""
    beta1, beta2 = betas
    ratios = []
    for w, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        m.lerp_(g, 1 - beta1)  # beta1 * m + (1 - beta1) * g
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        # r = m_hat / (sqrt(v_hat) + eps) + weight_decay * w with m_hat = m / c1, v_hat = v / c2,
        # c1 = 1 - beta1^t, c2 = 1 - beta2^t; computed as m / (sqrt(v) * c1 / sqrt(c2) + eps * c1),
        # in the multi-tensor step's order of operations
        c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
        r = v.sqrt().mul_(c1 / math.sqrt(c2)).add_(eps * c1).reciprocal_().mul_(m)
        r.add_(w, alpha=weight_decay)
        if adapt:
            weight_norm, update_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(r)
            ratio = torch.where((weight_norm > 0) & (update_norm > 0), weight_norm / update_norm, 1.0)
            ratio = _bound(ratio, trust_ratio_min, trust_ratio_max)
        else:
            ratio = torch.ones((), dtype=w.dtype, device=w.device)
        ratios.append(ratio)
        w.addcmul_(r, ratio * -lr)  # w <- w - lr * trust * r
    return torch.stack(ratios)


def _multi_tensor_step(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                       exp_avg_sqs: list[Tensor], steps: list[int], workspace: list[Tensor],
                       **options: Any) -> Tensor:
    """The same step on the tensors of one device, many at a time (all at once on a GPU, a few
    MB at a time on a CPU: see :func:`largebatch.optim.multi_tensor.chunks`); returns the trust
    ratio per tensor. ``workspace`` holds one tensor per parameter for the update r."""
    return torch.cat([_multi_tensor_chunk(params[start:end], grads[start:end], exp_avgs[start:end],
                                          exp_avg_sqs[start:end], steps[start:end], workspace[start:end],
                                          **options)
                      for start, end in chunks(params)])


def _multi_tensor_chunk(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                        exp_avg_sqs: list[Tensor], steps: list[int], workspace: list[Tensor], *, lr: float,
                        betas: tuple[float, float], eps: float, weight_decay: float, trust_ratio_min: float,
                        trust_ratio_max: float, adapt: bool) -> Tensor:
    """:func:`_multi_tensor_step` on one chunk of tensors."""
    beta1, beta2 = betas
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    # r = m / (sqrt(v) * c1 / sqrt(c2) + eps * c1) + weight_decay * w, built in the workspace
    c1s, c2s = [1 - beta1 ** t for t in steps], [1 - beta2 ** t for t in steps]
    updates = workspace
    torch._foreach_copy_(updates, exp_avg_sqs)
    torch._foreach_sqrt_(updates)
    torch._foreach_mul_(updates, [c1 / math.sqrt(c2) for c1, c2 in zip(c1s, c2s)])
    torch._foreach_add_(updates, [eps * c1 for c1 in c1s])
    torch._foreach_reciprocal_(updates)
    torch._foreach_mul_(updates, exp_avgs)
    if weight_decay != 0:
        torch._foreach_add_(updates, params, alpha=weight_decay)
    if adapt:
        weight_norms = torch.stack(torch._foreach_norm(params))
        update_norms = torch.stack(torch._foreach_norm(updates))
        ratios = torch.where((weight_norms > 0) & (update_norms > 0), weight_norms / update_norms, 1.0)
        ratios = _bound(ratios, trust_ratio_min, trust_ratio_max)
    else:
        ratios = torch.ones(len(params), dtype=params[0].dtype, device=params[0].device)
    torch._foreach_addcmul_(params, updates, list((ratios * -lr).unbind()))
    return ratios
