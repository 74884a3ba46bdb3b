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

    from pipeline.models.architecture import Architecture


def build(arch: Architecture) -> torch.nn.Module:
    """Instantiate the CNN for `arch` (weights initialised from the current torch RNG)."""
    from torch import nn

    class TinyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            height, width, c_in = arch.input_shape
            layers: list[nn.Module] = []
            for c_out in arch.channels:
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

    return TinyCNN()
