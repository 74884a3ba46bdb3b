"""A tiny transformer encoder (model.arch transformer) that quantizes fully to int8 and runs in
TensorFlow Lite Micro.

- Frames of `stride` steps are embedded by a linear layer, plus a learned position embedding.
- Attention is written out (reshape, transpose, matmul, softmax, matmul) so it lowers to int8
  BATCH_MATMUL and SOFTMAX; `nn.MultiheadAttention` would not.
- The normalisation is LayerNorm written from mean, sub, mul and rsqrt: `nn.LayerNorm` stays a
  float island even with tinyops's quantizer.
- The feed-forward uses ReLU: TFLite Micro has no GELU kernel.
- One encoder block per entry of `model.channels` (that entry is its feed-forward width);
  `hidden_size` is the model width, `heads` the attention heads. The mean over frames feeds
  dropout and a linear head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from pipeline.models.spec import Architecture

EPSILON = 1e-5


def build(arch: Architecture) -> torch.nn.Module:
    """The encoder for `arch` (weights from the current torch RNG)."""
    import torch
    from torch import nn

    steps, channels = arch.input_shape
    frames, width = steps // arch.stride, arch.hidden_size

    class Norm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(width))
            self.bias = nn.Parameter(torch.zeros(width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            centred = x - x.mean(dim=-1, keepdim=True)
            variance = (centred * centred).mean(dim=-1, keepdim=True)
            return centred * torch.rsqrt(variance + EPSILON) * self.weight + self.bias

    class Block(nn.Module):
        def __init__(self, ffn: int) -> None:
            super().__init__()
            self.qkv = nn.Linear(width, 3 * width)
            self.out = nn.Linear(width, width)
            self.norm1, self.norm2 = Norm(), Norm()
            self.ffn = nn.Sequential(nn.Linear(width, ffn), nn.ReLU(), nn.Linear(ffn, width))

        def attention(self, x: torch.Tensor) -> torch.Tensor:
            batch, head = x.shape[0], width // arch.heads
            q, k, v = (
                t.reshape(batch, frames, arch.heads, head).transpose(1, 2)
                for t in self.qkv(x).split(width, dim=-1)
            )
            scores = torch.matmul(q, k.transpose(-1, -2)) * (head**-0.5)
            mixed = torch.matmul(torch.softmax(scores, dim=-1), v)
            return self.out(mixed.transpose(1, 2).reshape(batch, frames, width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.norm1(x + self.attention(x))
            return self.norm2(x + self.ffn(x))

    class TinyTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(arch.stride * channels, width)
            self.position = nn.Parameter(torch.zeros(1, frames, width))
            nn.init.normal_(self.position, std=0.02)
            self.blocks = nn.Sequential(*(Block(ffn) for ffn in arch.channels))
            self.dropout = nn.Dropout(arch.dropout)
            self.classifier = nn.Linear(width, arch.num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch = x.shape[0]
            x = x[:, : frames * arch.stride].reshape(batch, frames, arch.stride * channels)
            x = self.blocks(self.embed(x) + self.position)
            return self.classifier(self.dropout(x.mean(dim=1)))

    return TinyTransformer()
