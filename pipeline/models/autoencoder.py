"""A dense autoencoder on the flattened (T, C) window, for anomaly detection the way MLPerf
Tiny's AD benchmark does it: trained on normal windows only, scored by how badly it rebuilds a
window (pipeline/models/tasks.py), evaluated with AUC.

Linear + ReLU layers only, so every op quantizes to int8 and runs in TensorFlow Lite Micro; the
output is the rebuilt window, flattened (T·C values), which firmware compares with its input.
`model.channels` are the encoder's widths down to the bottleneck; the decoder mirrors them.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pipeline.models.spec import Architecture


def widths(arch: Architecture) -> list[int]:
    """Every layer's width from input to output: T·C, encoder, mirrored decoder, T·C."""
    steps, channels = arch.input_shape
    encoder = list(arch.channels)
    return [steps * channels, *encoder, *reversed(encoder[:-1]), steps * channels]


class DenseAutoencoder(nn.Module):
    """Linear + ReLU layers over the flattened window, down to the bottleneck and back up."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        sizes = widths(arch)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


def build(arch: Architecture) -> nn.Module:
    """The autoencoder for `arch` (weights from the current torch RNG)."""
    return DenseAutoencoder(arch)
