"""LARS: Layer-wise Adaptive Rate Scaling (You, Gitman, Ginsburg 2017, Algorithm 1), the variants
found in other code bases as explicit switches, and LARC clipping (NVIDIA apex).

Two implementations of the same step: the default multi-tensor one (``torch._foreach_*`` over
many tensors per call, every per-tensor factor kept on the device) and a per-tensor reference
loop, written to be read and used by the tests; the two agree to the last bit. Neither modifies ``p.grad``,
calls ``.item()`` or branches in Python on a tensor value, so a step never waits for the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from largebatch.config import TRUST_DENOMINATORS, ZERO_NORM_RULES
from largebatch.optim.layerwise import LayerwiseOptimizer
from largebatch.optim.multi_tensor import chunks



class LARS(LayerwiseOptimizer):
    r"""LARS as published, and its common variants as switches.

    Per parameter tensor w with gradient g, global learning rate lr (gamma_t in the paper),
    trust coefficient eta, weight decay beta, momentum m:

        local_lr = eta * ||w|| / (||g|| + beta * ||w|| + eps)     (1 where ||w|| or ||g|| is 0)
        v <- m * v + lr * local_lr * (g + beta * w)
        w <- w - v

    That is [L] Algorithm 1 with the zero-norm rule of the paper's Intel Caffe code. Every tensor
    is adapted, biases and BatchNorm parameters included, unless a parameter group sets
    ``adapt=False`` (see :func:`largebatch.optim.parameter_groups`).

    Switches (each also a parameter-group key):

    - ``trust_denominator="norm_of_sum"``: local_lr = eta * ||w|| / (||g + beta * w|| + eps), 1
      where ||w|| or ||g + beta * w|| is 0 (Facebook's self-supervised code: Barlow Twins, VICReg).
    - ``lr_in_velocity=False``: v <- m * v + local_lr * (g + beta * w);  w <- w - lr * v
      (torch SGD style: timm, apex). Differs from the paper only while lr changes.
    - ``nesterov=True``: w <- w - (u + m * v) with u the new term added to v (times lr when the
      LR sits outside the velocity).
    - ``trust_ratio_min``, ``trust_ratio_max``: local_lr clamped into these bounds (the zero-norm
      1 included).
    - ``clip=True`` (LARC, apex and timm ``trust_clip``): the effective rate of a tensor is
      min(local_lr, lr), i.e. local_lr is replaced by min(local_lr / lr, 1). With LARC, local_lr
      is itself a learning rate (apex's default eta is 0.02). A rate of min(lr * local_lr, lr),
      which caps local_lr at 1, is ``trust_ratio_max=1`` instead.
    - ``zero_norm``: what a tensor gets when ||w|| or the norm in the denominator is 0.
      ``"rate_one"`` (default): local_lr = 1, which then passes through the bounds and LARC's cap
      like any other local_lr, and the tensor is weight-decayed (the paper's Caffe code; timm
      ``Lars``, which also caps it: min(1 / lr, 1) under ``trust_clip``). ``"gradient_only"``: the
      tensor steps on its gradient alone at the global rate, local_lr = 1 with no bounds, no cap
      and no weight decay (NVIDIA apex ``LARC``, which adapts and decays a tensor only
      ``if param_norm != 0 and grad_norm != 0``). A zero ||w|| has no weight decay to drop, so
      the two differ in the cap, and, for a tensor with a zero gradient, in its decay.
    - ``adapt=False``: local_lr = 1 (plain momentum SGD for that group).

    ``foreach=False`` selects the per-tensor reference loop. After each step,
    :meth:`trust_ratios` holds the local_lr of every adapted tensor that had a gradient (after
    bounds and clipping: the factor between that tensor's rate and lr), on the device.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float,
                 momentum: float = 0.9, weight_decay: float = 0.0, trust_coefficient: float = 0.001,
                 eps: float = 0.0, nesterov: bool = False, clip: bool = False,
                 trust_denominator: str = "sum_of_norms", lr_in_velocity: bool = True,
                 trust_ratio_min: float = 0.0, trust_ratio_max: float = math.inf, adapt: bool = True,
                 zero_norm: str = "rate_one", foreach: bool = True):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, nesterov=nesterov, clip=clip,
                        trust_denominator=trust_denominator, lr_in_velocity=lr_in_velocity,
                        trust_ratio_min=trust_ratio_min, trust_ratio_max=trust_ratio_max, adapt=adapt,
                        zero_norm=zero_norm)
        # Workspaces hold g + beta * w in the variants that need it as a tensor of its own
        # (norm_of_sum, Nesterov, no momentum).
        super().__init__(params, defaults, foreach)

    @staticmethod
    def check_group(group: dict[str, Any]) -> None:
        _check_group(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # groups saved before the switch existed
            group.setdefault("zero_norm", "rate_one")

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One LARS step over every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._trust_ratios = []
        for group in self.param_groups:
            _check_group(group)  # a group's values may have been changed since construction
            for params, grads, buffers, workspace in self._tensors_by_device(group):
                if self.foreach:
                    ratios = _multi_tensor_step(params, grads, buffers, workspace, **_options(group))
                else:
                    ratios = _reference_step(params, grads, buffers, **_options(group))
                if group["adapt"]:
                    self._trust_ratios.append(ratios)
        return loss

    def _tensors_by_device(self, group: dict[str, Any]) -> list[tuple[list[Tensor], ...]]:
        """(params, grads, momentum buffers, workspaces) of the group's parameters that have a
        gradient, one tuple per device; buffers start at zero ([L] Algorithm 1: v_0 = 0)."""
        needs_workspace = self.foreach and (
            (group["adapt"] and group["trust_denominator"] == "norm_of_sum")
            or group["nesterov"] or group["momentum"] == 0)
        by_device: dict[torch.device, tuple[list[Tensor], ...]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("LARS does not support sparse gradients")
            params, grads, buffers, workspace = by_device.setdefault(p.device, ([], [], [], []))
            params.append(p)
            grads.append(p.grad)
            if needs_workspace:
                workspace.append(self.workspace(p))
            if group["momentum"] != 0:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
        return list(by_device.values())


def _options(group: dict[str, Any]) -> dict[str, Any]:
    return {key: group[key] for key in ("lr", "momentum", "weight_decay", "trust_coefficient", "eps",
                                        "nesterov", "clip", "trust_denominator", "lr_in_velocity",
                                        "trust_ratio_min", "trust_ratio_max", "adapt", "zero_norm")}


def _check_group(group: dict[str, Any]) -> None:
    if not isinstance(group["lr"], (int, float)) or group["lr"] < 0:
        raise ValueError(f"LARS: lr must be a number >= 0, got {group['lr']!r}")
    if not 0.0 <= group["momentum"] <= 1.0:
        raise ValueError(f"LARS: momentum must be in [0, 1], got {group['momentum']}")
    if group["weight_decay"] < 0 or group["eps"] < 0 or group["trust_coefficient"] <= 0:
        raise ValueError("LARS: weight_decay and eps must be >= 0 and trust_coefficient > 0")
    if group["trust_denominator"] not in TRUST_DENOMINATORS:
        raise ValueError(f"LARS: trust_denominator must be one of {', '.join(TRUST_DENOMINATORS)}, "
                         f"got {group['trust_denominator']!r}")
    if not 0.0 <= group["trust_ratio_min"] <= group["trust_ratio_max"]:
        raise ValueError(f"LARS: need 0 <= trust_ratio_min <= trust_ratio_max, got "
                         f"{group['trust_ratio_min']} and {group['trust_ratio_max']}")
    if group["nesterov"] and group["momentum"] == 0:
        raise ValueError("LARS: Nesterov momentum needs momentum > 0")
    if group.setdefault("zero_norm", "rate_one") not in ZERO_NORM_RULES:
        raise ValueError(f"LARS: zero_norm must be one of {', '.join(ZERO_NORM_RULES)}, got {group['zero_norm']!r}")


def _bound(ratio: Tensor, lr: float, trust_ratio_min: float, trust_ratio_max: float, clip: bool) -> Tensor:
    """Apply the optional bounds, then LARC clipping: min(local_lr, lr) / lr = min(local_lr / lr, 1)."""
    if trust_ratio_min > 0 or trust_ratio_max < math.inf:
        ratio = ratio.clamp(min=trust_ratio_min, max=trust_ratio_max)
    if clip:
        # lr is a Python number: this branch never reads the device. At lr = 0 any rate is 0,
        # and min(local_lr / lr, 1) tends to 1.
        ratio = (ratio / lr).clamp(max=1.0) if lr > 0 else torch.ones_like(ratio)
    return ratio


def _reference_step(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor], *, lr: float,
                    momentum: float, weight_decay: float, trust_coefficient: float, eps: float,
                    nesterov: bool, clip: bool, trust_denominator: str, lr_in_velocity: bool,
                    trust_ratio_min: float, trust_ratio_max: float, adapt: bool, zero_norm: str) -> Tensor:
    """The step written per tensor, as in the class docstring; returns the local_lr per tensor.

    The operations come in the same order as in :func:`_multi_tensor_step`, so that the two
    agree to the last bit and a test can compare them over many steps of real training."""
    ratios = []
    for index, (w, g) in enumerate(zip(params, grads)):
        decayed = torch.add(g, w, alpha=weight_decay)  # g + beta * w, a new tensor: p.grad is untouched
        decay = weight_decay  # the weight decay of this tensor (gradient_only: 0 where a norm is 0)
        if adapt:
            weight_norm = torch.linalg.vector_norm(w)
            if trust_denominator == "sum_of_norms":
                gradient_norm = torch.linalg.vector_norm(g)
                ratio = trust_coefficient * weight_norm / (gradient_norm + weight_decay * weight_norm + eps)
            else:
                gradient_norm = torch.linalg.vector_norm(decayed)
                ratio = trust_coefficient * weight_norm / (gradient_norm + eps)
            live = (weight_norm > 0) & (gradient_norm > 0)
            if zero_norm == "rate_one":
                ratio = _bound(torch.where(live, ratio, 1.0), lr, trust_ratio_min, trust_ratio_max, clip)
            else:  # gradient_only: the step on g alone, at the global rate
                ratio = torch.where(live, _bound(ratio, lr, trust_ratio_min, trust_ratio_max, clip), 1.0)
                decay = weight_decay * live.to(w.dtype)
                decayed.addcmul_(w, decay - weight_decay)  # g + beta w - beta w = g where not live
        else:
            ratio = torch.ones((), dtype=w.dtype, device=w.device)
            decay = weight_decay
        ratios.append(ratio)
        scale = ratio * lr if lr_in_velocity else ratio
        if momentum != 0 and not nesterov:
            # v <- m * v + scale * (g + beta * w), summed term by term as the multi-tensor step does
            v = buffers[index]
            v.mul_(momentum)
            if adapt and trust_denominator == "norm_of_sum":
                v.addcmul_(decayed, scale)
            else:
                v.addcmul_(g, scale)
                if weight_decay != 0:
                    v.addcmul_(w, scale * decay)
            update = v
        else:
            update = decayed * scale
            if momentum != 0:  # Nesterov: v <- m * v + u;  w <- w - (u + m * v)
                v = buffers[index]
                v.mul_(momentum).add_(update)
                update = update.add(v, alpha=momentum)
        if lr_in_velocity:
            w.sub_(update)
        else:
            w.add_(update, alpha=-lr)
    return torch.stack(ratios)


def _multi_tensor_step(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor],
                       workspace: list[Tensor], **options: Any) -> Tensor:
    """The same step on the tensors of one device, many at a time (all at once on a GPU, a few
    MB at a time on a CPU: see :func:`largebatch.optim.multi_tensor.chunks`); returns the
    local_lr per tensor. ``workspace`` is empty, or one tensor per parameter for g + beta * w."""
    return torch.cat([_multi_tensor_chunk(params[start:end], grads[start:end], buffers[start:end],
                                          workspace[start:end], **options)
                      for start, end in chunks(params)])


def _multi_tensor_chunk(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor],
                        workspace: list[Tensor], *, lr: float, momentum: float, weight_decay: float,
                        trust_coefficient: float, eps: float, nesterov: bool, clip: bool,
                        trust_denominator: str, lr_in_velocity: bool, trust_ratio_min: float,
                        trust_ratio_max: float, adapt: bool, zero_norm: str) -> Tensor:
    """:func:`_multi_tensor_step` on one chunk of tensors."""
    decayed = None
    if workspace:  # the variants that need g + beta * w as a tensor (never written into p.grad)
        torch._foreach_copy_(workspace, grads)
        if weight_decay != 0:
            torch._foreach_add_(workspace, params, alpha=weight_decay)
        decayed = workspace
    if adapt:
        weight_norms = torch.stack(torch._foreach_norm(params))
        if trust_denominator == "sum_of_norms":
            gradient_norms = torch.stack(torch._foreach_norm(grads))
            ratios = trust_coefficient * weight_norms / (gradient_norms + weight_decay * weight_norms + eps)
        else:
            gradient_norms = torch.stack(torch._foreach_norm(decayed))
            ratios = trust_coefficient * weight_norms / (gradient_norms + eps)
        live = (weight_norms > 0) & (gradient_norms > 0)
        if zero_norm == "rate_one":
            ratios = _bound(torch.where(live, ratios, 1.0), lr, trust_ratio_min, trust_ratio_max, clip)
        else:  # gradient_only: the step on g alone, at the global rate
            ratios = torch.where(live, _bound(ratios, lr, trust_ratio_min, trust_ratio_max, clip), 1.0)
            decays = weight_decay * live.to(params[0].dtype)
            if decayed is not None:
                torch._foreach_addcmul_(decayed, params, list((decays - weight_decay).unbind()))
    else:
        ratios = torch.ones(len(params), dtype=params[0].dtype, device=params[0].device)
    scales = ratios * lr if lr_in_velocity else ratios  # per-tensor factor on (g + beta * w)

    if momentum != 0 and not nesterov:
        # v <- m * v + s * g + s * beta * w, accumulated in place: no temporary as large as the
        # model, and two fewer passes over memory than materialising g + beta * w first.
        torch._foreach_mul_(buffers, momentum)
        if decayed is not None:
            torch._foreach_addcmul_(buffers, decayed, list(scales.unbind()))
        else:
            torch._foreach_addcmul_(buffers, grads, list(scales.unbind()))
            if weight_decay != 0:
                decay = decays if adapt and zero_norm == "gradient_only" else weight_decay
                torch._foreach_addcmul_(buffers, params, list((scales * decay).unbind()))
        update = buffers
    else:
        torch._foreach_mul_(decayed, list(scales.unbind()))
        update = decayed
        if momentum != 0:  # Nesterov: w <- w - (u + m * v)
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, update)
            torch._foreach_add_(update, buffers, alpha=momentum)
    if lr_in_velocity:
        torch._foreach_sub_(params, update)
    else:
        torch._foreach_add_(params, update, alpha=-lr)
    return ratios
