"""What LARS and LAMB share: a torch Optimizer with a per-tensor trust ratio kept on the device,
a multi-tensor or per-tensor implementation, and workspaces kept between steps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from largebatch.optim.multi_tensor import concatenate, summary


class LayerwiseOptimizer(Optimizer):
    """Base of :class:`largebatch.optim.LARS` and :class:`largebatch.optim.LAMB`.

    Subclasses define ``check_group(group)`` (validate one parameter group; called when a group is
    added and before each step, since a group's values may change) and ``step``, which sets
    ``self._trust_ratios`` to the per-tensor ratios of the adapted tensors. ``foreach=False``
    selects the per-tensor reference loop. Workspaces (model-sized scratch tensors) are kept
    between steps and not saved: allocating model-sized memory every step costs more than the
    arithmetic on a CPU."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any],
                 foreach: bool = True):
        self.foreach = foreach
        self._trust_ratios: list[Tensor] = []
        self._workspace: dict[Tensor, Tensor] = {}
        super().__init__(params, defaults)

    @staticmethod
    def check_group(group: dict[str, Any]) -> None:
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self.check_group(self.param_groups[-1])

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy and pickle keep the implementation
        return {**super().__getstate__(), "foreach": self.foreach}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("foreach", True)
        self._trust_ratios, self._workspace = [], {}

    def workspace(self, parameter: Tensor) -> Tensor:
        """The scratch tensor kept for ``parameter`` (created on first use)."""
        if parameter not in self._workspace:
            self._workspace[parameter] = torch.empty_like(parameter, memory_format=torch.preserve_format)
        return self._workspace[parameter]

    def trust_ratios(self) -> Tensor | None:
        """The last step's trust ratio (LARS: local_lr) of every adapted tensor that had a
        gradient, as one 1-D tensor on the first parameter's device (no copy to the host); None
        before the first step."""
        return concatenate(self._trust_ratios)

    def trust_ratio_summary(self) -> Tensor | None:
        """[min, median, max] of :meth:`trust_ratios` as a 3-element tensor on the device (the
        median is the lower one for an even count); None when there is nothing to summarise."""
        return summary(self.trust_ratios())
