"""A small transformer encoder with GELU, as papers write it: it fails tinyops preflight before
any training, because TensorFlow Lite Micro has no GELU kernel. `tinyops preflight` names the
layer, the op and the remedy (use ReLU, as the bundled transformer family does).

    model: {arch: custom, module: "user_models.gelu_transformer:build"}   # time series
"""

from __future__ import annotations

import torch
from torch import nn


class GeluEncoder(nn.Module):
    """Project each step, one pre-norm feed-forward block with GELU, mean over time, classify."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> None:
        super().__init__()
        _, channels = input_shape
        self.embed = nn.Linear(channels, width)
        self.norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.ffn(self.norm(h))
        return self.head(h.mean(dim=1))


def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return GeluEncoder(input_shape, num_classes)
