"""The image CNN (model.arch cnn2d), designed to quantize fully to int8: conv/BN/ReLU/max-pool
blocks, an average pool (AVERAGE_POOL_2D, not a global MEAN that would stay float), and a linear
head.

It takes NHWC input, the layout of the .tflite models and of MCU camera buffers, so the same
arrays feed torch, LiteRT and TFLite Micro; the single permute at the input is folded away by
litert-torch's layout optimisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pipeline.models.spec import Architecture


class TinyCNN(nn.Module):
    """Conv / BatchNorm / ReLU / max-pool blocks, an average pool and a linear head."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        height, width, c_in = arch.input_shape
        layers: list[nn.Module] = []
        self.block_slices: list[range] = []  # plain attribute: not part of the state dict
        for c_out in arch.channels:
            start = len(layers)
            layers += [
                nn.Conv2d(c_in, c_out, arch.kernel_size, padding=arch.kernel_size // 2, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            self.block_slices.append(range(start, len(layers)))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool: nn.Module = (
            nn.AvgPool2d((height, width)) if (height, width) != (1, 1) else nn.Identity()
        )
        self.dropout = nn.Dropout(arch.dropout)
        self.classifier = nn.Linear(c_in, arch.num_classes)
        self.input_strides = _input_strides(self, arch.input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # NHWC in, NCHW inside
        x = self.pool(self.features(x))
        return self.classifier(self.dropout(x.flatten(1)))


class CNNStage(nn.Module):
    """A pipeline stage running `blocks` of a TinyCNN (shared modules, not copies). Its output is
    contiguous: gloo sends only contiguous tensors, and NHWC input makes channels_last
    activations."""

    def __init__(self, model: TinyCNN, blocks: range, n_blocks: int) -> None:
        super().__init__()
        slices = block_slices(model)
        self.first, self.last = blocks.start == 0, blocks.stop == n_blocks
        self.strides = model.input_strides[blocks.start]
        self.layers = nn.ModuleList(model.features[i] for b in blocks for i in slices[b])
        self.head = nn.ModuleList(
            [model.pool, model.dropout, model.classifier] if self.last else []
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            x = x.permute(0, 3, 1, 2)
        else:  # the exact layout the whole model has here, so kernels match bit for bit
            strides = (x[0].numel(), *self.strides)
            x = torch.empty_strided(x.shape, strides, dtype=x.dtype, device=x.device).copy_(x)
        for layer in self.layers:
            x = layer(x)
        if not self.last:
            return x.contiguous()
        pool, dropout, classifier = self.head
        return classifier(dropout(pool(x).flatten(1)))


def block_slices(model: nn.Module) -> list[range]:
    """Indices into model.features of each block (recorded when the model was built, so they
    survive pruning)."""
    return list(model.block_slices)


def prune(model: nn.Module, blocks: set[int]) -> nn.Module:
    """The model with every block outside `blocks` replaced by nn.Identity (the head goes with the
    last block), in place: what one pipeline worker holds. Parameter names stay those of the full
    model, so the union of the workers' state dicts loads strictly into it."""
    slices = block_slices(model)
    for b, layers in enumerate(slices):
        if b not in blocks:
            for i in layers:
                model.features[i] = nn.Identity()
    if len(slices) - 1 not in blocks:
        model.pool, model.dropout, model.classifier = nn.Identity(), nn.Identity(), nn.Identity()
    return model


def stage(model: nn.Module, blocks: range, n_blocks: int) -> nn.Module:
    """The module that runs `blocks` of `model` as one pipeline stage."""
    assert isinstance(model, TinyCNN), type(model)
    return CNNStage(model, blocks, n_blocks)


def build(arch: Architecture) -> nn.Module:
    """Instantiate the CNN for `arch` (weights initialised from the current torch RNG)."""
    return TinyCNN(arch)


def _input_strides(model: TinyCNN, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The strides (batch dim left out) of the activation entering each block. NHWC input makes
    channels_last activations, and at 1×1 spatial size the layout is ambiguous: a pipeline stage
    recreates these exact strides so its convolutions run the whole model's kernels."""
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = torch.zeros((2, *input_shape)).permute(0, 3, 1, 2)
        for layers in model.block_slices:
            out.append(tuple(x.stride()[1:]))
            for i in layers:
                x = model.features[i](x)
    model.train(was_training)
    return out
