"""The image CNN (model.arch cnn2d), designed to quantize fully to int8: conv/BN/ReLU/max-pool
blocks, an average pool (AVERAGE_POOL_2D, not a global MEAN that would stay float), and a linear
head.

It takes NHWC input, the layout of the .tflite models and of MCU camera buffers, so the same
arrays feed torch, LiteRT and TFLite Micro; the single permute at the input is folded away by
litert-torch's layout optimisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from pipeline.models.spec import Architecture


def block_slices(model: torch.nn.Module) -> list[range]:
    """Indices into model.features of each block (recorded when the model was built, so they
    survive pruning)."""
    return list(model.block_slices)


def prune(model: torch.nn.Module, blocks: set[int]) -> torch.nn.Module:
    """The model with every block outside `blocks` replaced by nn.Identity (the head goes with the
    last block), in place: what one pipeline worker holds. Parameter names stay those of the full
    model, so the union of the workers' state dicts loads strictly into it."""
    from torch import nn

    slices = block_slices(model)
    for b, layers in enumerate(slices):
        if b not in blocks:
            for i in layers:
                model.features[i] = nn.Identity()
    if len(slices) - 1 not in blocks:
        model.pool, model.dropout, model.classifier = nn.Identity(), nn.Identity(), nn.Identity()
    return model


def stage(model: torch.nn.Module, blocks: range, n_blocks: int) -> torch.nn.Module:
    """A pipeline stage running `blocks` of `model` (shared modules, not copies). Its output is
    contiguous: gloo sends only contiguous tensors, and NHWC input makes channels_last activations."""
    import torch
    from torch import nn

    slices = block_slices(model)
    layers = [i for b in blocks for i in slices[b]]
    first, last = blocks.start == 0, blocks.stop == n_blocks

    class CNNStage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(model.features[i] for i in layers)
            self.head = nn.ModuleList([model.pool, model.dropout, model.classifier] if last else [])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if first:
                x = x.permute(0, 3, 1, 2)
            else:  # the exact layout the whole model has here, so kernels match bit for bit
                strides = (x[0].numel(), *model.input_strides[blocks.start])
                x = torch.empty_strided(x.shape, strides, dtype=x.dtype, device=x.device).copy_(x)
            for layer in self.layers:
                x = layer(x)
            if not last:
                return x.contiguous()
            pool, dropout, classifier = self.head
            return classifier(dropout(pool(x).flatten(1)))

    return CNNStage()


def build(arch: Architecture) -> torch.nn.Module:
    """Instantiate the CNN for `arch` (weights initialised from the current torch RNG)."""
    from torch import nn

    class TinyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            height, width, c_in = arch.input_shape
            layers: list[nn.Module] = []
            self.block_slices: list[range] = []  # plain attribute: not part of the state dict
            for c_out in arch.channels:
                start = len(layers)
                layers += [
                    nn.Conv2d(
                        c_in, c_out, arch.kernel_size, padding=arch.kernel_size // 2, bias=False
                    ),
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

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 3, 1, 2)  # NHWC in, NCHW inside
            x = self.pool(self.features(x))
            return self.classifier(self.dropout(x.flatten(1)))

    net = TinyCNN()
    net.input_strides = _input_strides(net, arch.input_shape)
    return net


def _input_strides(model: torch.nn.Module, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The strides (batch dim left out) of the activation entering each block. NHWC input makes
    channels_last activations, and at 1×1 spatial size the layout is ambiguous: a pipeline stage
    recreates these exact strides so its convolutions run the whole model's kernels."""
    import torch

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
