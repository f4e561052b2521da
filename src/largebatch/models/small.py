"""Small-image networks (28x28 and 32x32 inputs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """x + f(x), f two 3x3 conv-BN-ReLU layers."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels)
        self.conv2 = conv_bn_relu(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class FastResNet(nn.Module):
    """The small fast ResNet of the default Fashion-MNIST recipe, in the style of the fast
    CIFAR-10 trainers (Page's ResNet-9, cifar10-airbench): pool early, one residual block per
    stage, max-pool head. Widths (16, 32, 64): 116,602 parameters and about 9.1M MACs at 28x28,
    about 1,400 training images/s on 2 CPU cores.

    stem conv 3x3 -> pool 2 -> [conv 3x3 -> residual] -> pool 2 -> [conv 3x3 -> residual] ->
    global max-pool -> linear.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        c1, c2, c3 = widths
        self.stem = conv_bn_relu(in_channels, c1)
        self.layer1 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(c1, c2), Residual(c2))
        self.layer2 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(c2, c3), Residual(c3))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))

    def residual_branch_ends(self) -> list[nn.BatchNorm2d]:
        """The last BatchNorm of each residual branch (zero_init_residual sets its gamma to 0)."""
        return [block.conv2[1] for block in self.modules() if isinstance(block, Residual)]


class CifarBasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)) with He et al.'s option A shortcut
    (sec. 4.2): identity, or when the block halves the resolution and doubles the channels, every
    second pixel in each direction with zero channels appended. The shortcut has no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:
            # F.pad's last pair of numbers pads dimension 1, the channels: zeros after the input's.
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The ResNets He et al. (2016, sec. 4.2) built for 32x32 CIFAR-10 images: a 3x3 convolution
    to 16 channels, then three stages of n basic blocks at 16, 32 and 64 channels (stages 2 and 3
    halve the resolution), global average pool, linear classifier; depth = 6n + 2 weighted layers.
    ResNet-20 (n = 3) has 269,722 parameters with 10 classes (the paper's "0.27M") and about
    41M MACs per 32x32 image. A 28x28 input works too (it ends as 7x7 before the pool)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, channels_in = [], 16
        for index, channels in enumerate((16, 32, 64)):
            stride = 1 if index == 0 else 2
            stage = [CifarBasicBlock(channels_in, channels, stride)]
            stage += [CifarBasicBlock(channels, channels) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels_in = channels
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def residual_branch_ends(self) -> list[nn.BatchNorm2d]:
        """The last BatchNorm of each residual branch (zero_init_residual sets its gamma to 0)."""
        return [block.bn2 for block in self.modules() if isinstance(block, CifarBasicBlock)]


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(110, num_classes, in_channels)
