"""ResNets for ImageNet-sized inputs (He et al. 2016, "Deep Residual Learning for Image Recognition").

The layout, parameter counts and state-dict key names are torchvision's, so that existing ResNet
weights load: ``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``layer4.2.bn3``,
``layer1.0.downsample.0`` (the 1x1 projection) and ``layer1.0.downsample.1`` (its BN), ``fc``.

Two variants of the bottleneck block:
- v1.5 (the default, torchvision's and NVIDIA's "ResNet-50 v1.5"): a downsampling block puts its
  stride on the 3x3 convolution. About 4.09 GMACs per 224x224 image for ResNet-50.
- v1 (He et al.'s original Caffe model, the "ResNet-50, v.1" that You et al. [L] trained): the
  stride sits on the first 1x1 convolution, which then skips three of every four positions.
  About 3.86 GMACs; same parameters and keys, so weights load across the two, with different
  results.
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 downsample: nn.Module | None = None, stride_on_3x3: bool = True):
        # stride_on_3x3 is accepted for a uniform block signature: both convolutions are 3x3.
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))

    def residual_branch_end(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + shortcut(x)): 1x1 reduce to
    ``channels``, 3x3, 1x1 expand to ``4 * channels`` (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 downsample: nn.Module | None = None, stride_on_3x3: bool = True):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = conv1x1(in_channels, channels, 1 if stride_on_3x3 else stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride if stride_on_3x3 else 1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))

    def residual_branch_end(self) -> nn.BatchNorm2d:
        return self.bn3


class ResNet(nn.Module):
    """Stem (7x7/2 convolution, BN, ReLU, 3x3/2 max-pool), four stages of residual blocks at
    widths 64, 128, 256, 512 (times the block's expansion), the first block of stages 2-4
    downsampling by 2 with a 1x1 projection shortcut, global average pool, linear classifier.
    Output stride 32: a 224x224 image ends as 7x7 before the pool; any input of 32 pixels or more
    works (a 28x28 one ends as 1x1)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int],
                 num_classes: int = 1000, in_channels: int = 3, stride_on_3x3: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels_in = 64
        stages = []
        for index, (channels, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            out_channels = channels * block.expansion
            downsample = None
            if stride != 1 or channels_in != out_channels:
                downsample = nn.Sequential(conv1x1(channels_in, out_channels, stride),
                                           nn.BatchNorm2d(out_channels))
            stage = [block(channels_in, channels, stride, downsample, stride_on_3x3)]
            stage += [block(out_channels, channels, stride_on_3x3=stride_on_3x3) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels_in = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def residual_branch_ends(self) -> list[nn.BatchNorm2d]:
        """The last BatchNorm of each residual branch (zero_init_residual sets its gamma to 0)."""
        return [module.residual_branch_end() for module in self.modules()
                if isinstance(module, (BasicBlock, Bottleneck))]


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18: 11,689,512 parameters with 1000 classes, about 1.82 GMACs at 224x224."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet34(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-34: 21,797,672 parameters with 1000 classes, about 3.67 GMACs at 224x224."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50 v1.5 (stride on the 3x3 convolution): 25,557,032 parameters with 1000 classes,
    about 4.09 GMACs at 224x224."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


def resnet50_v1(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50 v1 (stride on the first 1x1 convolution, He et al.'s Caffe model, the one You
    et al. [L] trained): 25,557,032 parameters, about 3.86 GMACs at 224x224."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, stride_on_3x3=False)


def resnet101(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-101 v1.5: 44,549,160 parameters with 1000 classes."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_channels)


def resnet152(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-152 v1.5: 60,192,808 parameters with 1000 classes."""
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes, in_channels)
