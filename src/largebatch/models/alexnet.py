"""AlexNet with Batch Normalization (AlexNet-BN), the network You et al. [L] scaled to batch 32K.

[L] (You, Gitman, Ginsburg 2017, sec. 3) made AlexNet trainable at large learning rates by
replacing its Local Response Normalization with BatchNorm. Two layouts, chosen by name in
``largebatch.models`` (docs/models.md gives the reasons and the sources):

- ``alexnet_bn``: the single-tower AlexNet of Krizhevsky's "One weird trick" (2014), the one
  torchvision ships (convolutions 64-192-384-256-256, 224x224 input), with BN after each of the
  five convolutions and after the first two fully connected layers. About 0.71 GMACs.
- ``alexnet_bn_caffe``: the layout of [L]'s own Caffe model (BVLC AlexNet, the two-tower network
  of Krizhevsky et al. 2012 kept as grouped convolutions: 96-256-384-384-256, groups of 2 in
  convolutions 2, 4, 5, 227x227 input), BN after each convolution only. About 0.72 GMACs.

Every convolution is conv -> BN -> ReLU, without a bias (BN's shift replaces it); a fully
connected layer followed by BN has no bias either. Dropout (0.5) acts on the outputs of the two
hidden fully connected layers, as in Krizhevsky et al. 2012 and the Caffe models.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class AlexNetBN(nn.Module):
    """Five convolutions (11x11/4, 5x5, 3x3, 3x3, 3x3; 3x3/2 max-pools after the first, second
    and fifth) and three fully connected layers (4096, 4096, classes).

    A 6x6 adaptive average pool before the classifier makes any input from 63x63 up work; at the
    default input sizes (224 with ``conv1_padding=2``, 227 with 0) it is the identity, since the
    feature map is already 6x6.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3,
                 widths: tuple[int, int, int, int, int] = (64, 192, 384, 256, 256),
                 groups: tuple[int, int, int, int, int] = (1, 1, 1, 1, 1), conv1_padding: int = 2,
                 fc_batchnorm: bool = True, dropout: float = 0.5, hidden: int = 4096):
        super().__init__()
        kernels, paddings = (11, 5, 3, 3, 3), (conv1_padding, 2, 1, 1, 1)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for index, (width, kernel, padding, group) in enumerate(zip(widths, kernels, paddings, groups), 1):
            layers[f"conv{index}"] = nn.Conv2d(channels, width, kernel, stride=4 if index == 1 else 1,
                                               padding=padding, groups=group, bias=False)
            layers[f"bn{index}"] = nn.BatchNorm2d(width)
            layers[f"relu{index}"] = nn.ReLU(inplace=True)
            if index in (1, 2, 5):
                layers[f"pool{index}"] = nn.MaxPool2d(3, stride=2)
            channels = width
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))

        head: OrderedDict[str, nn.Module] = OrderedDict()
        features_in = channels * 6 * 6
        for index in (6, 7):
            head[f"fc{index}"] = nn.Linear(features_in, hidden, bias=not fc_batchnorm)
            if fc_batchnorm:
                head[f"bn{index}"] = nn.BatchNorm1d(hidden)
            head[f"relu{index}"] = nn.ReLU(inplace=True)
            head[f"drop{index}"] = nn.Dropout(dropout)
            features_in = hidden
        head["fc8"] = nn.Linear(hidden, num_classes)
        self.classifier = nn.Sequential(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def alexnet_bn(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNetBN:
    """Single-tower AlexNet-BN at 224x224: 61,110,184 parameters with 1000 classes."""
    return AlexNetBN(num_classes, in_channels, dropout=dropout)


def alexnet_bn_caffe(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNetBN:
    """[L]'s Caffe AlexNet-BN at 227x227 (grouped convolutions, BN after convolutions only)."""
    return AlexNetBN(num_classes, in_channels, widths=(96, 256, 384, 384, 256), groups=(1, 2, 1, 2, 2),
                     conv1_padding=0, fc_batchnorm=False, dropout=dropout)
