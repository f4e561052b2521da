"""Cost of a model per image: multiply-accumulates (MACs) and parameters, by running it once.

What is counted: the multiply-accumulates of ``nn.Conv2d`` and ``nn.Linear`` layers, read from
the shapes a forward pass actually produces, so any input size and any model built from those
modules is counted exactly:

    Conv2d:  MACs = output elements x (in_channels / groups) x kernel_height x kernel_width
    Linear:  MACs = output elements x in_features

Not counted, as is conventional (torchvision's "GFLOPS" column, fvcore, ptflops' default):
bias additions, BatchNorm, ReLU, pooling, residual additions, softmax. They are a few percent
of the arithmetic of a ResNet and memory-bound anyway. One MAC is two FLOPs; a training step
costs about three forward passes (forward, gradient with respect to activations and to weights).
Parameters are the trainable and frozen tensors of ``model.parameters()`` (not BN's running
statistics, which are buffers).

The planner cannot import torch (it must answer in under a second), so the cost of every model
at its default input size is also kept as a plain dict in ``largebatch/model_costs.py``. Write it
again after changing a model with ``python -m largebatch.models.cost --write``; a test fails
while it is stale. ``python -m largebatch.models.cost`` prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

TABLE_PATH = Path(__file__).resolve().parents[1] / "model_costs.py"


class Cost(NamedTuple):
    macs: int  # multiply-accumulates per image, convolutions and linear layers
    params: int


def count_cost(model: nn.Module, input_size: int | tuple[int, int], in_channels: int | None = None) -> Cost:
    """MACs per image of one forward pass at ``input_size`` (side, or (height, width)), and
    parameters. ``in_channels`` defaults to the first convolution's. The model runs once in eval
    mode without gradients on its own device (a model built on the ``meta`` device costs no
    arithmetic at all); its training mode is restored afterwards."""
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    if in_channels is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            raise ValueError("count_cost: the model has no Conv2d; pass in_channels")
        in_channels = first.in_channels
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32

    macs = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kernel_height, kernel_width = module.kernel_size
            macs += output.numel() * (module.in_channels // module.groups) * kernel_height * kernel_width
        else:
            macs += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, height, width, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return Cost(macs, sum(p.numel() for p in model.parameters()))


def model_cost(name: str, input_size: int | None = None, in_channels: int | None = None,
               num_classes: int | None = None) -> Cost:
    """Cost of a named model (defaults: its own input size, channels and class count), built on
    the meta device so that no weights are allocated and no arithmetic is done."""
    from largebatch import models  # here, not at the top: largebatch.models imports this module

    entry = models.MODELS[name]
    with torch.device("meta"):
        model = models.build(name, num_classes=num_classes or entry.num_classes,
                             in_channels=in_channels or entry.in_channels)
    return count_cost(model, input_size or entry.input_size, in_channels or entry.in_channels)


def cost_row(name: str) -> dict[str, int]:
    """{macs, params, input_size, in_channels, num_classes} of a named model at its defaults."""
    from largebatch import models

    entry = models.MODELS[name]
    cost = model_cost(name)
    return {"macs": cost.macs, "params": cost.params, "input_size": entry.input_size,
            "in_channels": entry.in_channels, "num_classes": entry.num_classes}


def cost_table() -> dict[str, dict[str, int]]:
    """:func:`cost_row` of every model: the content of ``largebatch/model_costs.py``."""
    from largebatch import models

    return {name: cost_row(name) for name in models.list_models()}


def render_table_module(table: dict[str, dict[str, int]]) -> str:
    """The source of ``largebatch/model_costs.py`` for ``table``."""
    lines = [
        '"""Cost per image of every model at its default input size, for code that must not import',
        "torch (the planner). GENERATED by `python -m largebatch.models.cost --write` from the counter",
        "in largebatch/models/cost.py; do not edit by hand (tests/models/test_cost.py fails when stale).",
        "",
        "macs: multiply-accumulates of convolutions and linear layers for one image, forward pass",
        "(one MAC = 2 FLOPs; a training step is about 3 forward passes). params: parameters.",
        '"""',
        "",
        "MODEL_COSTS: dict[str, dict[str, int]] = {",
    ]
    for name, row in table.items():
        fields = ", ".join(f'"{key}": {value}' for key, value in row.items())
        lines.append(f'    "{name}": {{{fields}}},')
    lines.append("}")
    return "\n".join(lines) + "\n"


def format_table(table: dict[str, dict[str, int]]) -> str:
    """Name, parameters, GMACs per image and input size, one model a line."""
    rows = [f"{'model':18s} {'parameters':>12s} {'GMACs':>8s}  {'input':9s} classes"]
    for name, row in table.items():
        size = row["input_size"]
        rows.append(f"{name:18s} {row['params']:>12,d} {row['macs'] / 1e9:>8.4f}  "
                    f"{row['in_channels']}x{size}x{size:<5d} {row['num_classes']}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m largebatch.models.cost", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write the table to {TABLE_PATH.name}")
    parser.add_argument("--check", action="store_true", help="exit 1 when the written table is stale")
    args = parser.parse_args(argv)
    table = cost_table()
    source = render_table_module(table)
    if args.write:
        TABLE_PATH.write_text(source)
        print(f"wrote {TABLE_PATH}")
    elif args.check:
        current = TABLE_PATH.read_text() if TABLE_PATH.exists() else ""
        if current != source:
            print(f"{TABLE_PATH} is stale: run python -m largebatch.models.cost --write", file=sys.stderr)
            return 1
        print(f"{TABLE_PATH} is up to date")
    print(format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
