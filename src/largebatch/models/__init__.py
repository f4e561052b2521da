"""Model architectures by name: ``build(name, num_classes, in_channels, zero_init_residual, **options)``.

Families, one module each: ``resnet`` (ImageNet ResNets, torchvision's layout and key names),
``alexnet`` (AlexNet-BN), ``small`` (28x28 and 32x32 networks); ``cost`` counts MACs and
parameters. docs/models.md describes each model and its sources.

Models know nothing about distribution, precision or compilation; ``train.py`` applies those.
"""

from __future__ import annotations

import inspect
import sys
from typing import Callable, NamedTuple, TextIO

from torch import nn

from largebatch.errors import ConfigError
from largebatch.models import alexnet, resnet, small


class ModelEntry(NamedTuple):
    constructor: Callable[..., nn.Module]  # (num_classes, in_channels, **options) -> model
    input_size: int  # default image side in pixels
    in_channels: int  # default input channels
    num_classes: int  # classes of the data set the model was designed for (the cost table's)


MODELS: dict[str, ModelEntry] = {
    # ImageNet networks
    "alexnet_bn": ModelEntry(alexnet.alexnet_bn, 224, 3, 1000),
    "alexnet_bn_caffe": ModelEntry(alexnet.alexnet_bn_caffe, 227, 3, 1000),
    "resnet18": ModelEntry(resnet.resnet18, 224, 3, 1000),
    "resnet34": ModelEntry(resnet.resnet34, 224, 3, 1000),
    "resnet50": ModelEntry(resnet.resnet50, 224, 3, 1000),
    "resnet50_v1": ModelEntry(resnet.resnet50_v1, 224, 3, 1000),
    "resnet101": ModelEntry(resnet.resnet101, 224, 3, 1000),
    "resnet152": ModelEntry(resnet.resnet152, 224, 3, 1000),
    # Small-image networks
    "fast_resnet": ModelEntry(small.FastResNet, 28, 1, 10),
    "resnet20": ModelEntry(small.resnet20, 32, 3, 10),
    "resnet32": ModelEntry(small.resnet32, 32, 3, 10),
    "resnet56": ModelEntry(small.resnet56, 32, 3, 10),
    "resnet110": ModelEntry(small.resnet110, 32, 3, 10),
}


def list_models() -> list[str]:
    return list(MODELS)


def _entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ConfigError(f"model: unknown model '{name}' (choose from {', '.join(list_models())})")
    return MODELS[name]


def default_input_size(name: str) -> int:
    return _entry(name).input_size


def default_in_channels(name: str) -> int:
    return _entry(name).in_channels


def has_residual_blocks(model: nn.Module) -> bool:
    return hasattr(model, "residual_branch_ends")


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He initialisation (He et al. 2015: normal, std sqrt(2 / fan_out)) for convolutions, BN
    gamma 1 and beta 0, linear layers left at PyTorch's default (as torchvision does); with
    ``zero_init_residual``, gamma 0 in the last BN of each residual branch, so that every
    residual block starts as the identity on its shortcut (Goyal et al. 2017, sec. 5.1)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for bn in model.residual_branch_ends():
            nn.init.zeros_(bn.weight)


def build(name: str, num_classes: int = 1000, in_channels: int | None = None,
          zero_init_residual: bool = False, **options) -> nn.Module:
    """Build a model by name with standard initialisation.

    ``in_channels`` defaults to the model's own (3, or 1 for fast_resnet); ``options`` go to the
    model's constructor (fast_resnet: ``widths``; alexnet_bn, alexnet_bn_caffe: ``dropout``).
    """
    entry = _entry(name)
    if num_classes < 1:
        raise ConfigError(f"model: num_classes must be at least 1, got {num_classes}")
    accepted = set(inspect.signature(entry.constructor).parameters) - {"num_classes", "in_channels"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"model: {name} has no option {', '.join(unknown)} "
                          f"(its options: {', '.join(sorted(accepted)) or 'none'})")
    model = entry.constructor(num_classes=num_classes, in_channels=in_channels or entry.in_channels, **options)
    if zero_init_residual and not has_residual_blocks(model):
        raise ConfigError(f"model.zero_init_residual: {name} has no residual blocks; set it to false")
    init_weights(model, zero_init_residual)
    return model


def print_table(file: TextIO | None = None) -> None:
    """Name, parameters, GMACs per image at the default input size, input size and classes of
    every model, from the generated table ``largebatch/model_costs.py`` (kept current by a
    test); a model missing from it is counted now."""
    from largebatch.model_costs import MODEL_COSTS
    from largebatch.models.cost import cost_row, format_table

    table = {name: MODEL_COSTS.get(name) or cost_row(name) for name in list_models()}
    print(format_table(table), file=file or sys.stdout)
