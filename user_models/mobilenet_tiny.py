"""A MobileNet-style image network (depthwise-separable blocks with ReLU6), built to pass
tinyops preflight: every op quantizes to int8 and has a TensorFlow Lite Micro kernel.

    model: {arch: custom, module: "user_models.mobilenet_tiny:build"}
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    pad = kernel // 2
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, pad, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(),
    ]


class MobileNetTiny(nn.Module):
    """A strided stem, then (depthwise 3×3, pointwise 1×1) blocks, average pool, linear head.
    Input NHWC, as tinyops feeds every image model."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths=(16, 32, 64)) -> None:
        super().__init__()
        height, width, c_in = input_shape
        layers = _conv(c_in, widths[0], 3, stride=2)
        height, width = (height + 1) // 2, (width + 1) // 2
        for c_prev, c_out in itertools.pairwise(widths):
            layers += _conv(c_prev, c_prev, 3, stride=2, groups=c_prev) + _conv(c_prev, c_out, 1)
            height, width = (height + 1) // 2, (width + 1) // 2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d((height, width))
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x.permute(0, 3, 1, 2)))
        return self.classifier(x.flatten(1))


def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MobileNetTiny(input_shape, num_classes)
