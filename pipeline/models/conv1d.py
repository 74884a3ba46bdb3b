"""Convolutional sequence families on (T, C) input, designed to quantize fully to int8:
- cnn1d: conv / BatchNorm / ReLU / max-pool blocks;
- dscnn1d: a conv stem, then depthwise-separable blocks (depthwise conv, pointwise conv), like
  MLPerf Tiny's keyword-spotting DS-CNN in one dimension;
- tcn: dilated causal convolutions (left padding only, dilation doubling per block) with
  residual connections, so step t never sees a later step.

Each ends in a mean over time (int8 MEAN with tinyops's quantizer), dropout and a linear head.
The input is NTC, the layout of sensor buffers; one permute makes it NCT inside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from pipeline.models.spec import Architecture


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, **conv: int) -> list[nn.Module]:
    return [nn.Conv1d(c_in, c_out, kernel, bias=False, **conv), nn.BatchNorm1d(c_out), nn.ReLU()]


def _cnn1d(arch: Architecture) -> list[nn.Module]:
    steps, c_in = arch.input_shape
    layers: list[nn.Module] = []
    for i, c_out in enumerate(arch.channels):
        stride = arch.stride if i == 0 else 1
        layers += _conv_bn_relu(
            c_in, c_out, arch.kernel_size, stride=stride, padding=arch.kernel_size // 2
        )
        steps = (steps - 1) // stride + 1
        if steps >= 4:
            layers.append(nn.MaxPool1d(2))
            steps //= 2
        c_in = c_out
    return layers


def _dscnn1d(arch: Architecture) -> list[nn.Module]:
    _, c_in = arch.input_shape
    width = arch.channels[0]
    stem = max(arch.kernel_size, arch.stride)
    layers = _conv_bn_relu(c_in, width, stem, stride=arch.stride, padding=(stem - 1) // 2)
    for c_out in arch.channels:
        pad = arch.kernel_size // 2
        layers += _conv_bn_relu(width, width, arch.kernel_size, padding=pad, groups=width)
        layers += _conv_bn_relu(width, c_out, 1)
        width = c_out
    return layers


class Conv1dNet(nn.Module):
    """cnn1d and dscnn1d: the feature layers, a mean over time, dropout and a linear head."""

    def __init__(self, features: nn.Module, width: int, arch: Architecture) -> None:
        super().__init__()
        self.features = features
        self.dropout = nn.Dropout(arch.dropout)
        self.classifier = nn.Linear(width, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x.permute(0, 2, 1))  # NTC in, NCT inside
        return self.classifier(self.dropout(x.mean(dim=2)))


class CausalBlock(nn.Module):
    """A dilated causal convolution (left padding only) with a residual connection."""

    def __init__(self, c_in: int, c_out: int, dilation: int, kernel_size: int) -> None:
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(c_out)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(F.pad(x, (self.pad, 0))))
        return torch.relu(y + self.skip(x))


class TCN(nn.Module):
    """tcn: a strided stem, causal blocks with doubling dilation, a mean over time, a head."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        c_in = arch.input_shape[1]
        width = arch.channels[0]
        self.stem = nn.Sequential(*_conv_bn_relu(c_in, width, arch.stride, stride=arch.stride))
        blocks = []
        for i, c_out in enumerate(arch.channels):
            blocks.append(CausalBlock(width, c_out, 2**i, arch.kernel_size))
            width = c_out
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(arch.dropout)
        self.classifier = nn.Linear(width, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x.permute(0, 2, 1)))
        return self.classifier(self.dropout(x.mean(dim=2)))


def build(arch: Architecture) -> nn.Module:
    """The family `arch.arch` names (weights from the current torch RNG)."""
    if arch.arch == "tcn":
        return TCN(arch)
    layers = _cnn1d(arch) if arch.arch == "cnn1d" else _dscnn1d(arch)
    return Conv1dNet(nn.Sequential(*layers), arch.channels[-1], arch)
