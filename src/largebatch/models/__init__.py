"""Model architectures by name: ``build(name, num_classes, in_channels, **options)``.

Models know nothing about distribution, precision or compilation; ``train.py`` applies those.
"""

from __future__ import annotations

from torch import nn

from largebatch.errors import ConfigError
from largebatch.models.small import FastResNet

# name -> (constructor, default input size, default input channels)
MODELS = {
    "fast_resnet": (FastResNet, 28, 1),
}


def list_models() -> list[str]:
    return sorted(MODELS)


def default_input_size(name: str) -> int:
    return MODELS[name][1]


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He (Kaiming normal, fan_out) initialisation for convolutions, BN gamma 1 and beta 0,
    and optionally gamma 0 at the end of each residual branch (Goyal et al. 2017, sec. 5.1)."""
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
    """Build a model by name with standard initialisation."""
    if name not in MODELS:
        raise ConfigError(f"model: unknown model '{name}' (choose from {', '.join(list_models())})")
    constructor, _, channels = MODELS[name]
    model = constructor(num_classes=num_classes, in_channels=in_channels or channels, **options)
    init_weights(model, zero_init_residual)
    return model


def print_table() -> None:
    """Name, parameters and input size of every model."""
    print(f"{'model':16s} {'parameters':>12s} {'input':>9s}")
    for name in list_models():
        _, size, channels = MODELS[name]
        model = build(name, num_classes=10 if size <= 32 else 1000)
        parameters = sum(p.numel() for p in model.parameters())
        print(f"{name:16s} {parameters:>12,d} {channels}x{size}x{size:<3d}")
